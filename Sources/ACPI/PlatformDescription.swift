/// The machine the firmware tables describe: the few facts an x86 guest needs to find its
/// processors, interrupt controllers and the devices it cannot discover by probing.
///
/// Both the ACPI tables and the MP table are made from one description, through the same
/// functions (`isaInterruptRoute(_:)`), so the two can never disagree about a CPU or an interrupt.
public struct PlatformDescription: Equatable, Sendable {
    /// The number of vCPUs, 1–255. vCPU *i* has local APIC ID *i* and ACPI processor UID *i*;
    /// vCPU 0 is the bootstrap processor. xAPIC IDs are 8 bits and 0xFF is the broadcast ID, so 255
    /// is the most an xAPIC machine without interrupt remapping can address.
    public var cpuCount: Int
    /// The local APICs' physical address: 0xFEE0_0000, where KVM's in-kernel LAPIC sits.
    public var localAPICAddress: UInt32
    /// The one I/O APIC.
    public var ioAPIC: IOAPICDescription
    /// Where ISA IRQ 0, the PIT's, reaches the I/O APIC.
    public var timerRouting: TimerRouting
    /// Whether the machine also has the two 8259 PICs of a PC/AT (KVM_CREATE_IRQCHIP makes them):
    /// the MADT's PCAT_COMPAT flag.
    public var hasDual8259: Bool
    /// The 16550 UARTs, described in the DSDT as PNP0501 devices.
    public var serialPorts: [SerialPortDescription]
    /// Whether an i8042 keyboard controller answers on ports 0x60/0x64 (FADT IAPC_BOOT_ARCH 8042 flag).
    public var hasI8042: Bool
    /// Whether a CMOS RTC answers on ports 0x70/0x71 (clear: the FADT's CMOS RTC Not Present flag).
    public var hasCMOSRTC: Bool
    /// The virtio-mmio devices, one DSDT device each (`_HID "LNRO0005"`).
    public var virtioMMIODevices: [VirtioMMIOWindow]
    /// The pvpanic device, if any (`_HID "QEMU0001"`).
    public var pvpanic: PVPanicDescription?
    /// How the guest powers off and resets.
    public var power: PowerManagement

    public init(
        cpuCount: Int,
        localAPICAddress: UInt32 = PlatformDescription.defaultLocalAPICAddress,
        ioAPIC: IOAPICDescription = IOAPICDescription(),
        timerRouting: TimerRouting = .identity,
        hasDual8259: Bool = true,
        serialPorts: [SerialPortDescription] = [.com1],
        hasI8042: Bool = false,
        hasCMOSRTC: Bool = false,
        virtioMMIODevices: [VirtioMMIOWindow] = [],
        pvpanic: PVPanicDescription? = PVPanicDescription(),
        power: PowerManagement = PowerManagement()
    ) {
        self.cpuCount = cpuCount
        self.localAPICAddress = localAPICAddress
        self.ioAPIC = ioAPIC
        self.timerRouting = timerRouting
        self.hasDual8259 = hasDual8259
        self.serialPorts = serialPorts
        self.hasI8042 = hasI8042
        self.hasCMOSRTC = hasCMOSRTC
        self.virtioMMIODevices = virtioMMIODevices
        self.pvpanic = pvpanic
        self.power = power
    }

    /// APIC_DEFAULT_PHYS_BASE.
    public static let defaultLocalAPICAddress: UInt32 = 0xFEE0_0000
    /// The most vCPUs an xAPIC machine can have: IDs 0–254.
    public static let maximumCPUCount = 255
    /// ISA IRQ 2 is the 8259 cascade: no device raises it.
    public static let cascadeIRQ: UInt32 = 2
    /// The ISA IRQs, 0–15.
    public static let isaIRQs: ClosedRange<UInt32> = 0...15

    /// The I/O APIC input (its global system interrupt) ISA IRQ `irq` arrives on, or nil for the
    /// cascade IRQ 2 and for numbers past 15. Identity, except IRQ 0 under `.pin2`.
    public func isaInterruptRoute(_ irq: UInt32) -> UInt32? {
        guard Self.isaIRQs.contains(irq), irq != Self.cascadeIRQ else { return nil }
        if irq == 0, timerRouting == .pin2 { return ioAPIC.gsiBase + 2 }
        return ioAPIC.gsiBase + irq
    }

    /// Checks what the tables rely on: a CPU count of 1–255, one I/O APIC at GSI 0 with 16–240
    /// inputs, an SCI (fixed-hardware model) on a level-capable ISA IRQ, and virtio-mmio windows that
    /// are non-empty, below 4 GiB, apart from one another, and each on an I/O APIC input of its own
    /// that no other device here (timer, cascade, UARTs, i8042, SCI) uses.
    public func validate() throws(FirmwareTableError) {
        guard (1...Self.maximumCPUCount).contains(cpuCount) else {
            throw .invalidDescription("\(cpuCount) CPUs: an xAPIC machine has 1 to \(Self.maximumCPUCount)")
        }
        guard (16...240).contains(ioAPIC.inputCount) else {
            throw .invalidDescription("an I/O APIC with \(ioAPIC.inputCount) inputs: it needs 16 for the ISA IRQs and has at most 240")
        }
        guard ioAPIC.gsiBase == 0 else {
            throw .invalidDescription("an I/O APIC at GSI \(ioAPIC.gsiBase): the only I/O APIC starts at GSI 0, so ISA IRQ n is GSI n")
        }
        let gsis = ioAPIC.gsiBase..<(ioAPIC.gsiBase + UInt32(ioAPIC.inputCount))
        var taken: [UInt32: String] = [Self.cascadeIRQ: "the 8259 cascade"]
        taken[0] = "the PIT"
        if hasI8042 { taken[1] = "the i8042" }
        for port in serialPorts {
            guard Self.isaIRQs.contains(UInt32(port.irq)) else {
                throw .invalidDescription("the UART at port 0x\(String(port.port, radix: 16)) is on IRQ \(port.irq), not an ISA IRQ")
            }
            if let user = taken[UInt32(port.irq)] {
                throw .invalidDescription("the UART at port 0x\(String(port.port, radix: 16)) is on IRQ \(port.irq), which \(user) uses")
            }
            taken[UInt32(port.irq)] = "the UART at port 0x\(String(port.port, radix: 16))"
        }
        if case .fixedHardware(_, _, let sci) = power.model {
            // KVM's 8259 can make only IRQs 3-7, 9-12, 14 and 15 level-triggered (elcr_mask 0xF8, 0xDE).
            guard [3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15].contains(sci) else {
                throw .invalidDescription("the SCI on IRQ \(sci): a level-triggered ISA IRQ is one of 3-7, 9-12, 14, 15")
            }
            if let user = taken[UInt32(sci)] {
                throw .invalidDescription("the SCI is on IRQ \(sci), which \(user) uses")
            }
            taken[UInt32(sci)] = "the SCI"
        }
        guard virtioMMIODevices.count <= 0x100 else {
            throw .invalidDescription("\(virtioMMIODevices.count) virtio-mmio devices: their DSDT names VR00-VRFF allow 256")
        }
        for (index, window) in virtioMMIODevices.enumerated() {
            let name = "virtio-mmio device \(index) at 0x\(String(window.base, radix: 16))"
            let (end, overflow) = window.base.addingReportingOverflow(window.size)
            guard window.size > 0, !overflow, end <= 1 << 32 else {
                throw .invalidDescription("\(name) of 0x\(String(window.size, radix: 16)) bytes is empty or passes 4 GiB")
            }
            for other in virtioMMIODevices[..<index] where window.base < other.base + other.size && other.base < window.base + window.size {
                throw .invalidDescription("\(name) overlaps the one at 0x\(String(other.base, radix: 16))")
            }
            guard gsis.contains(window.irq) else {
                throw .invalidDescription("\(name) is on interrupt \(window.irq), which the I/O APIC (GSIs \(gsis.lowerBound)-\(gsis.upperBound - 1)) does not have")
            }
            if let user = taken[window.irq] {
                throw .invalidDescription("\(name) is on interrupt \(window.irq), which \(user) uses")
            }
            taken[window.irq] = name
        }
    }
}

/// The I/O APIC: its ID, its registers' address and the global system interrupts its inputs take.
public struct IOAPICDescription: Equatable, Sendable {
    /// The I/O APIC ID. KVM's in-kernel I/O APIC resets its ID register to 0, and QEMU reports 0
    /// too; on x86-64 Linux only requires I/O APIC IDs to differ from one another.
    public var id: UInt8
    /// IO_APIC_DEFAULT_PHYS_BASE, where KVM's in-kernel I/O APIC sits.
    public var address: UInt32
    /// The global system interrupt of input 0. It must be 0: with one I/O APIC, ISA IRQ *n* and
    /// GSI *n* are the same number, which is how `VirtioMMIOWindow.irq` is read by both tables.
    public var gsiBase: UInt32
    /// The number of inputs: KVM_IOAPIC_NUM_PINS is 24.
    public var inputCount: Int

    public init(id: UInt8 = 0, address: UInt32 = 0xFEC0_0000, gsiBase: UInt32 = 0, inputCount: Int = 24) {
        self.id = id
        self.address = address
        self.gsiBase = gsiBase
        self.inputCount = inputCount
    }

    /// The I/O APIC version the MP table states: 0x11, what KVM's I/O APIC version register reads.
    public static let version: UInt8 = 0x11
}

/// Where the PIT's ISA IRQ 0 reaches the I/O APIC.
public enum TimerRouting: Equatable, Sendable {
    /// IRQ 0 on input 0, like every other ISA IRQ: what KVM's default GSI routing does
    /// (`kvm_setup_default_irq_routing`: GSI *n* goes to 8259 input *n* and I/O APIC input *n*), and
    /// what a VMM that never sets KVM_SET_GSI_ROUTING, like this one, gets. No override is needed.
    case identity
    /// IRQ 0 on input 2, as on PC chipsets and in QEMU, which routes GSI 0 to I/O APIC input 2 with
    /// KVM_SET_GSI_ROUTING: the MADT gets an interrupt source override and the MP table maps IRQ 0
    /// to input 2. Choose it only with that routing in place.
    case pin2
}

/// A 16550 UART at an I/O port base with an ISA IRQ.
public struct SerialPortDescription: Equatable, Sendable {
    public var port: UInt16
    public var irq: UInt8

    public init(port: UInt16, irq: UInt8) {
        self.port = port
        self.irq = irq
    }

    /// COM1: ports 0x3F8–0x3FF, IRQ 4.
    public static let com1 = SerialPortDescription(port: 0x3F8, irq: 4)
}

/// A virtio-mmio register window and its interrupt: the shape of Virtio's
/// `VirtioMMIODeviceDescription`, repeated here so this module needs nothing but VMMCore. The VMM
/// maps one to the other field by field.
public struct VirtioMMIOWindow: Equatable, Sendable {
    /// The window's guest-physical base address, below 4 GiB.
    public var base: UInt64
    /// Its size in bytes (4 KiB for a virtio-mmio device).
    public var size: UInt64
    /// Its interrupt: a global system interrupt, the I/O APIC input it arrives on. The MP table
    /// needs it to be an ISA IRQ too (1–15, identity-routed); the ACPI tables take any input.
    public var irq: UInt32

    public init(base: UInt64, size: UInt64 = 0x1000, irq: UInt32) {
        self.base = base
        self.size = size
        self.irq = irq
    }
}

/// QEMU's pvpanic ISA device: one I/O port; reading it returns the events the device supports,
/// writing reports one (bit 0 PVPANIC_PANICKED, bit 1 PVPANIC_CRASH_LOADED). Linux's pvpanic
/// driver binds to the ACPI device `QEMU0001` and takes the port from its `_CRS`.
public struct PVPanicDescription: Equatable, Sendable {
    public var port: UInt16

    public init(port: UInt16 = 0x505) { self.port = port }

    /// The device's ACPI hardware ID.
    public static let hardwareID = "QEMU0001"
}

/// How the guest powers off and resets: which of ACPI's two hardware models the FADT describes,
/// the `\_S5` sleep type, and the FADT reset register (ACPI 6.5 §4.8.3.6).
///
/// To reboot with `reboot=a` (Linux's default), the guest writes `reset.value` to `reset.port`. To
/// power off, Linux evaluates `\_S5`, whose first element is `s5SleepType`, and writes that type
/// with SLP_EN to the model's control register; `isPowerOff(_:)` recognises the write. See
/// docs/acpi.md for why `fixedHardware` is the default.
public struct PowerManagement: Equatable, Sendable {
    public enum Model: Equatable, Sendable {
        /// A full ("fixed hardware") ACPI platform, the PC's (§4.8): a PM1a event block of four
        /// bytes at `pm1EventPort` (PM1_STS, then PM1_EN, 16 bits each), a PM1a control block of two
        /// bytes at `pm1ControlPort` (PM1_CNT), and the SCI on ISA IRQ `sciIRQ`, level-triggered,
        /// active-high. Linux stays on its legacy PC path: it programs and masks the 8259s, uses the
        /// PIT as its early clock event, and maps the ISA IRQs one to one. No PM timer, no GPE
        /// blocks; a FACS, which this model requires, with no waking vector.
        ///
        /// Power-off (ACPICA `acpi_hw_legacy_sleep`): a 16-bit write of SLP_TYP (bits 12:10), then
        /// one of SLP_TYP | SLP_EN (bit 13), to PM1_CNT. The SCI is never raised (there are no
        /// events), but its IRQ must be one nothing else uses.
        case fixedHardware(pm1EventPort: UInt16, pm1ControlPort: UInt16, sciIRQ: UInt8)
        /// A hardware-reduced platform (§4.1), as Firecracker, Cloud Hypervisor and QEMU microvm
        /// describe theirs: no SCI, no PM1 blocks, no FACS; the sleep control and sleep status
        /// registers, one byte each in I/O space (§4.8.3.7, §4.8.3.8). Linux then leaves its
        /// legacy PC path: it assumes no 8259 (`null_legacy_pic`) and skips the PIT/HPET timer set-up,
        /// so it must learn the TSC frequency elsewhere (kvmclock) and it never masks the 8259 —
        /// see docs/acpi.md for what the VMM must do in return.
        ///
        /// Power-off (ACPICA `acpi_hw_extended_sleep`): 0x80 (WAK_STS) to the status register, then
        /// SLP_TYP << 2 | SLP_EN (0x20) to the control register, one byte each.
        case hardwareReduced(sleepControlPort: UInt16, sleepStatusPort: UInt16)

        /// PM1a_EVT_BLK at 0x600, PM1a_CNT_BLK at 0x604 (the ICH9 PM block's layout, QEMU q35's
        /// ports), SCI on IRQ 7: of the ISA IRQs the VMM's devices leave free (3, 7, 8, 13), the
        /// 8259s' edge/level control register can make only 3 and 7 level-triggered (KVM's
        /// `elcr_mask`), and 3 is COM2's.
        public static let standardFixedHardware = Model.fixedHardware(pm1EventPort: 0x600, pm1ControlPort: 0x604, sciIRQ: 7)
        /// SLEEP_CONTROL_REG at 0x3C0, SLEEP_STATUS_REG at 0x3C1: in the VGA range, which this
        /// machine leaves free (the FADT says VGA is not present).
        public static let standardHardwareReduced = Model.hardwareReduced(sleepControlPort: 0x3C0, sleepStatusPort: 0x3C1)
    }

    public var model: Model
    /// The SLP_TYP value `\_S5` names and the control register receives: three bits (the
    /// initializer drops the others).
    public var s5SleepType: UInt8
    /// The reset register, or nil for none.
    public var reset: ResetRegister?

    public init(model: Model = .standardFixedHardware, s5SleepType: UInt8 = 5, reset: ResetRegister? = .i8042PulseReset) {
        self.model = model
        self.s5SleepType = s5SleepType & 0x07
        self.reset = reset
    }

    /// Whether the FADT describes a hardware-reduced platform.
    public var isHardwareReduced: Bool {
        if case .hardwareReduced = model { true } else { false }
    }

    /// SLP_EN in the hardware-reduced sleep control register: bit 5.
    public static let sleepControlEnable: UInt16 = 1 << 5
    /// WAK_STS in the hardware-reduced sleep status register: bit 7.
    public static let sleepStatusWake: UInt16 = 1 << 7
    /// SLP_EN in PM1_CNT: bit 13.
    public static let pm1ControlSleepEnable: UInt16 = 1 << 13
    /// SCI_EN in PM1_CNT: bit 0. A PM1_CNT that reads with it set tells the OS the platform is
    /// already in ACPI mode (there is no SMI_CMD port to switch it).
    public static let pm1ControlSCIEnable: UInt16 = 1 << 0

    /// The value Linux writes to the model's control register to enter S5 (bits it preserves from
    /// reading PM1_CNT aside): `0x3400` to PM1_CNT, `0x34` to the sleep control register, for type 5.
    public var powerOffValue: UInt16 {
        switch model {
        case .fixedHardware: UInt16(s5SleepType) << 10 | Self.pm1ControlSleepEnable
        case .hardwareReduced: UInt16(s5SleepType) << 2 | Self.sleepControlEnable
        }
    }

    /// Whether `value`, written to the model's control register (PM1_CNT, or the sleep control
    /// register), asks for S5: SLP_EN set and SLP_TYP equal to `s5SleepType`. Other bits do not
    /// matter.
    public func isPowerOff(_ value: UInt16) -> Bool {
        switch model {
        case .fixedHardware: value & Self.pm1ControlSleepEnable != 0 && (value >> 10) & 0x07 == UInt16(s5SleepType)
        case .hardwareReduced: value & Self.sleepControlEnable != 0 && (value >> 2) & 0x07 == UInt16(s5SleepType)
        }
    }
}

/// The FADT reset register (ACPI 6.5 §4.8.3.6): an I/O port and the byte that resets the machine.
public struct ResetRegister: Equatable, Sendable {
    public var port: UInt16
    public var value: UInt8

    public init(port: UInt16, value: UInt8) {
        self.port = port
        self.value = value
    }

    /// The i8042's command port and its pulse-reset-line command (0xFE), which a VMM with an
    /// i8042 already treats as a reset (what `reboot=k` writes).
    public static let i8042PulseReset = ResetRegister(port: 0x64, value: 0xFE)
}
