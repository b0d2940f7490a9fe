import VMMCore

/// The ACPI tables (ACPI 6.5 chapter 5), each made by a pure function from a `PlatformDescription`
/// and the addresses of the tables it points to. `FirmwareTables` chooses the addresses.
///
/// The FADT describes one of two platforms (`PowerManagement.Model`): a fixed-hardware PC with a
/// PM1a event and control block and an SCI (the default, which keeps Linux on its legacy PC path),
/// or a hardware-reduced one with sleep control and status registers. docs/acpi.md explains the
/// choice.
public enum ACPITable {
    /// OEMID in every header and in the RSDP: six bytes.
    public static let oemID = "SWIFTK"
    /// OEM Table ID in every header: eight bytes.
    public static let oemTableID = "SWIFTKVM"
    /// OEM Revision in every header.
    public static let oemRevision: UInt32 = 1
    /// Creator ID (the "ASL compiler" vendor) in every header.
    public static let creatorID = "SKVM"
    /// Creator Revision in every header.
    public static let creatorRevision: UInt32 = 1
    /// The FADT's Hypervisor Vendor Identity (ACPI 6.0+).
    public static let hypervisorVendor = "SWIFTKVM"

    /// The size of the system description table header (§5.2.6).
    public static let headerSize = 36
    /// The offset of the header's checksum byte.
    public static let checksumOffset = 9
    /// The size of an ACPI 2.0+ RSDP (§5.2.5.3).
    public static let rsdpSize = 36
    /// The RSDP's first checksum covers the ACPI 1.0 part: its first 20 bytes.
    public static let rsdpV1Size = 20
    /// The size of a revision-6 FADT (§5.2.9, Table 5.9).
    public static let fadtSize = 276

    /// `body` behind a system description table header (§5.2.6): `signature`, the total length,
    /// `revision`, the checksum that makes the table sum to zero, and this VMM's OEM fields.
    public static func make(signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var table: [UInt8] = []
        table.reserveCapacity(headerSize + body.count)
        table.appendASCII(signature, count: 4)
        table.appendLittleEndian(UInt32(headerSize + body.count))
        table.append(revision)
        table.append(0)  // checksum, below
        table.appendASCII(oemID, count: 6)
        table.appendASCII(oemTableID, count: 8)
        table.appendLittleEndian(oemRevision)
        table.appendASCII(creatorID, count: 4)
        table.appendLittleEndian(creatorRevision)
        table += body
        table[checksumOffset] = zeroSumChecksum(table)
        return table
    }

    /// The Root System Description Pointer, revision 2 (§5.2.5.3): "RSD PTR ", a checksum over
    /// the first 20 bytes, OEMID, revision 2, no RSDT (0: the XSDT alone lists the tables, which
    /// every ACPI 2.0+ OS uses), length 36, the XSDT's address, and an extended checksum over all
    /// 36 bytes.
    public static func makeRSDP(xsdt: GuestAddress) -> [UInt8] {
        var rsdp: [UInt8] = []
        rsdp.appendASCII("RSD PTR ", count: 8)
        rsdp.append(0)  // checksum, below
        rsdp.appendASCII(oemID, count: 6)
        rsdp.append(2)  // revision: ACPI 2.0 and later
        rsdp.appendLittleEndian(UInt32(0))  // RsdtAddress
        rsdp.appendLittleEndian(UInt32(rsdpSize))
        rsdp.appendLittleEndian(xsdt.rawValue)
        rsdp.append(0)  // extended checksum, below
        rsdp += [0, 0, 0]
        rsdp[8] = zeroSumChecksum(rsdp[0..<rsdpV1Size])
        rsdp[32] = zeroSumChecksum(rsdp)
        return rsdp
    }

    /// The Extended System Description Table (§5.2.8), revision 1: the 64-bit addresses of the
    /// other tables (here the FADT and the MADT; the FADT points to the DSDT).
    public static func makeXSDT(entries: [GuestAddress]) -> [UInt8] {
        var body: [UInt8] = []
        for entry in entries { body.appendLittleEndian(entry.rawValue) }
        return make(signature: "XSDT", revision: 1, body: body)
    }

    /// FADT flags (§5.2.9, Table 5.10).
    public enum FADTFlag {
        public static let wbinvd: UInt32 = 1 << 0
        public static let processorC1: UInt32 = 1 << 2
        /// The power button, if any, is a control-method device: there is no fixed one.
        public static let powerButton: UInt32 = 1 << 4
        /// The sleep button, if any, is a control-method device: there is no fixed one.
        public static let sleepButton: UInt32 = 1 << 5
        public static let resetRegisterSupported: UInt32 = 1 << 10
        public static let hardwareReduced: UInt32 = 1 << 20
    }

    /// IA-PC boot architecture flags (§5.2.9.3, Table 5.11).
    public enum BootArchitectureFlag {
        public static let legacyDevices: UInt16 = 1 << 0
        public static let i8042: UInt16 = 1 << 1
        public static let vgaNotPresent: UInt16 = 1 << 2
        public static let msiNotSupported: UInt16 = 1 << 3
        public static let pcieASPMControls: UInt16 = 1 << 4
        public static let cmosRTCNotPresent: UInt16 = 1 << 5
    }

    /// The Fixed ACPI Description Table, revision 6, minor version 5 (ACPI 6.5; §5.2.9), for the
    /// description's power-management model:
    ///
    /// - Flags: WBINVD and PROC_C1 (KVM runs both instructions); SLP_BUTTON set (no fixed sleep
    ///   button); PWR_BUTTON clear on the fixed-hardware model, whose power button is the fixed
    ///   feature in PM1, and set on the hardware-reduced one, which has none; RESET_REG_SUP with a reset register; HW_REDUCED_ACPI
    ///   for the hardware-reduced model.
    /// - IAPC_BOOT_ARCH: VGA not present, MSI not supported (there is no PCI), ASPM controls off;
    ///   8042 only if `hasI8042`; CMOS RTC not present unless `hasCMOSRTC`.
    /// - SMI_CMD 0: the platform is always in ACPI mode. No PM2, PM timer or GPE blocks; C2 and
    ///   C3 latencies above 100 and 1000 (not supported).
    /// - Fixed hardware: SCI_INT, PM1a_EVT_BLK (4 bytes) and PM1a_CNT_BLK (2 bytes) in I/O space,
    ///   in both their 32-bit and X_ fields; FIRMWARE_CTRL `facs` (X_FIRMWARE_CTRL stays zero).
    /// - Hardware-reduced: SLEEP_CONTROL_REG and SLEEP_STATUS_REG, one byte each in I/O space;
    ///   no FACS (`facs` is ignored).
    /// - DSDT and X_DSDT both `dsdt`.
    ///
    /// Addresses must lie below 4 GiB (`FirmwareTables` places them there).
    public static func makeFADT(description: PlatformDescription, dsdt: GuestAddress, facs: GuestAddress?) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: fadtSize - headerSize)
        func set<T: FixedWidthInteger>(_ value: T, at offset: Int) { body.setLittleEndian(value, at: offset - headerSize) }
        func setAddress(_ register: GenericAddress, at offset: Int) {
            body.replaceSubrange(offset - headerSize..<offset - headerSize + GenericAddress.size, with: register.encoded)
        }

        set(UInt32(truncatingIfNeeded: dsdt.rawValue), at: 40)  // DSDT
        set(UInt16(101), at: 96)  // P_LVL2_LAT > 100: C2 not supported
        set(UInt16(1001), at: 98)  // P_LVL3_LAT > 1000: C3 not supported

        var bootFlags = BootArchitectureFlag.vgaNotPresent | BootArchitectureFlag.msiNotSupported
            | BootArchitectureFlag.pcieASPMControls
        if description.hasI8042 { bootFlags |= BootArchitectureFlag.i8042 }
        if !description.hasCMOSRTC { bootFlags |= BootArchitectureFlag.cmosRTCNotPresent }
        set(bootFlags, at: 109)  // IAPC_BOOT_ARCH

        // PWR_BUTTON clear on the fixed-hardware model: its power button is the fixed feature in
        // PM1 (PWRBTN_STS/EN). The hardware-reduced model has no PM1 block, so no fixed button.
        var flags = FADTFlag.wbinvd | FADTFlag.processorC1 | FADTFlag.sleepButton
        if description.power.isHardwareReduced { flags |= FADTFlag.powerButton }
        if let reset = description.power.reset {
            flags |= FADTFlag.resetRegisterSupported
            setAddress(.ioByte(reset.port), at: 116)  // RESET_REG
            set(reset.value, at: 128)  // RESET_VALUE
        }
        switch description.power.model {
        case .fixedHardware(let pm1EventPort, let pm1ControlPort, let sciIRQ):
            // FIRMWARE_CTRL only: §5.2.9 wants X_FIRMWARE_CTRL zero when FIRMWARE_CTRL is set
            // (unlike X_DSDT, which may repeat DSDT).
            if let facs { set(UInt32(truncatingIfNeeded: facs.rawValue), at: 36) }
            set(UInt16(sciIRQ), at: 46)  // SCI_INT
            set(UInt32(pm1EventPort), at: 56)  // PM1a_EVT_BLK
            set(UInt32(pm1ControlPort), at: 64)  // PM1a_CNT_BLK
            set(UInt8(4), at: 88)  // PM1_EVT_LEN: PM1_STS and PM1_EN, two bytes each
            set(UInt8(2), at: 89)  // PM1_CNT_LEN
            setAddress(.io(pm1EventPort, bits: 32), at: 148)  // X_PM1a_EVT_BLK
            setAddress(.io(pm1ControlPort, bits: 16), at: 172)  // X_PM1a_CNT_BLK
        case .hardwareReduced(let sleepControlPort, let sleepStatusPort):
            flags |= FADTFlag.hardwareReduced
            setAddress(.ioByte(sleepControlPort), at: 244)  // SLEEP_CONTROL_REG
            setAddress(.ioByte(sleepStatusPort), at: 256)  // SLEEP_STATUS_REG
        }
        set(flags, at: 112)
        set(UInt8(5), at: 131)  // FADT Minor Version: ACPI 6.5
        set(dsdt.rawValue, at: 140)  // X_DSDT
        var vendor: [UInt8] = []
        vendor.appendASCII(hypervisorVendor, count: 8)
        body.replaceSubrange(268 - headerSize..<276 - headerSize, with: vendor)  // Hypervisor Vendor Identity
        return make(signature: "FACP", revision: 6, body: body)
    }

    /// The size of the FACS (§5.2.10), which must start on a 64-byte boundary.
    public static let facsSize = 64

    /// The Firmware ACPI Control Structure, version 2 (§5.2.10), which a fixed-hardware platform
    /// must have: "FACS", length 64, no hardware signature, no waking vector (there is no S3 to
    /// wake from), the global lock free, no flags. It has no checksum.
    public static func makeFACS() -> [UInt8] {
        var facs: [UInt8] = []
        facs.appendASCII("FACS", count: 4)
        facs.appendLittleEndian(UInt32(facsSize))
        facs += [UInt8](repeating: 0, count: 24)  // hardware signature, waking vector, global lock, flags, X waking vector
        facs.append(2)  // version
        facs += [UInt8](repeating: 0, count: facsSize - facs.count)  // reserved, OSPM flags, reserved
        return facs
    }

    /// MADT interrupt controller structure types (§5.2.12, Table 5.21).
    public enum MADTEntryType {
        public static let localAPIC: UInt8 = 0
        public static let ioAPIC: UInt8 = 1
        public static let interruptSourceOverride: UInt8 = 2
        public static let localAPICNMI: UInt8 = 4
    }

    /// The Multiple APIC Description Table, revision 5 (§5.2.12): the local APIC address and
    /// PCAT_COMPAT (if the machine has 8259s), then
    ///
    /// - one Processor Local APIC structure per vCPU (§5.2.12.2): UID *i*, APIC ID *i*, Enabled;
    /// - the I/O APIC (§5.2.12.3): its ID, address and GSI base;
    /// - an Interrupt Source Override (§5.2.12.5) for each ISA IRQ that does not arrive on the
    ///   I/O APIC input of its own number (IRQ 0 under `TimerRouting.pin2`), flags "conforms to
    ///   the bus" (ISA: edge-triggered, active-high); and for the SCI of the fixed-hardware model,
    ///   on its own input, level-triggered and active-high (so Linux does not assume its default
    ///   for an SCI without an override, active-low);
    /// - a Local APIC NMI structure (§5.2.12.7): NMI on LINT1 of every processor (UID 0xFF).
    ///
    /// A hardware-reduced Linux guest runs with no legacy PIC (`null_legacy_pic`) and so maps no
    /// ISA IRQ by default: interrupts reach it through the overrides here and through the
    /// `_CRS` of the DSDT's devices (the UART's included).
    public static func makeMADT(description: PlatformDescription) throws(FirmwareTableError) -> [UInt8] {
        try description.validate()
        var body: [UInt8] = []
        body.appendLittleEndian(description.localAPICAddress)
        body.appendLittleEndian(UInt32(description.hasDual8259 ? 1 : 0))  // PCAT_COMPAT
        for cpu in 0..<description.cpuCount {
            body += [MADTEntryType.localAPIC, 8, UInt8(cpu), UInt8(cpu)]
            body.appendLittleEndian(UInt32(1))  // Enabled
        }
        body += [MADTEntryType.ioAPIC, 12, description.ioAPIC.id, 0]
        body.appendLittleEndian(description.ioAPIC.address)
        body.appendLittleEndian(description.ioAPIC.gsiBase)
        for irq in PlatformDescription.isaIRQs {
            guard let gsi = description.isaInterruptRoute(irq), gsi != irq else { continue }
            body += [MADTEntryType.interruptSourceOverride, 10, 0, UInt8(irq)]  // bus 0: ISA
            body.appendLittleEndian(gsi)
            body.appendLittleEndian(UInt16(0))  // MPS INTI flags: conforms to the bus
        }
        if case .fixedHardware(_, _, let sciIRQ) = description.power.model {
            body += [MADTEntryType.interruptSourceOverride, 10, 0, sciIRQ]
            body.appendLittleEndian(description.ioAPIC.gsiBase + UInt32(sciIRQ))
            body.appendLittleEndian(UInt16(0b11 << 2 | 0b01))  // MPS INTI flags: level-triggered, active-high
        }
        body += [MADTEntryType.localAPICNMI, 6, 0xFF]  // all processors
        body.appendLittleEndian(UInt16(0))  // MPS INTI flags: conforms
        body.append(1)  // LINT1
        return make(signature: "APIC", revision: 5, body: body)
    }

    /// The virtio-mmio device's ACPI hardware ID, which Linux's virtio_mmio driver matches
    /// (drivers/virtio/virtio_mmio.c, `virtio_mmio_acpi_match`).
    public static let virtioMMIOHardwareID = "LNRO0005"

    /// The DSDT's name for virtio-mmio device `index`: `VR00` … `VRFF`.
    public static func virtioMMIODeviceName(_ index: Int) -> String {
        let hex = String(index, radix: 16, uppercase: true)
        return "VR" + String(repeating: "0", count: max(0, 2 - hex.count)) + hex
    }

    /// The AML of the DSDT: `\_S0` and `\_S5` (SLP_TYP `s5SleepType`, for power-off), then in
    /// `\_SB` a device per UART
    /// (`COM1`…, `PNP0501`: IO + IRQNoFlags), the pvpanic device (`PEVT`, `QEMU0001`: IO, `_STA`
    /// 0x0F), and a device per virtio-mmio window (`VR00`…, `LNRO0005`: Memory32Fixed +
    /// Interrupt, edge-triggered, active-high, exclusive; `_UID` the index; `_CCA` 1, cache-coherent DMA).
    public static func makeDSDTDefinitions(description: PlatformDescription) throws(FirmwareTableError) -> [UInt8] {
        try description.validate()
        let sleepType = AMLData.integer(UInt64(description.power.s5SleepType))
        let zero = AMLData.integer(0)
        // \_S0, the working state (SLP_TYP 0), is what ACPICA returns to if a sleep does not happen.
        let s0 = try AMLTerm.name("\\_S0", try .package([zero, zero, zero, zero]))
        let s5 = try AMLTerm.name("\\_S5", try .package([sleepType, sleepType, zero, zero]))

        var devices: [AMLTerm] = []
        for (index, serial) in description.serialPorts.enumerated() {
            devices.append(
                try .device("COM\(index + 1)", [
                    try .name("_HID", try .eisaID("PNP0501")),
                    try .name("_UID", .integer(UInt64(index + 1))),
                    try .name("_CRS", try .resourceTemplate([
                        .ioPort(minimum: serial.port, maximum: serial.port, alignment: 8, length: 8),
                        .irqNoFlags([serial.irq]),
                    ])),
                ]))
        }
        if let pvpanic = description.pvpanic {
            devices.append(
                try .device("PEVT", [
                    try .name("_HID", try .string(PVPanicDescription.hardwareID)),
                    try .name("_UID", .integer(0)),
                    try .name("_CRS", try .resourceTemplate([
                        .ioPort(minimum: pvpanic.port, maximum: pvpanic.port, alignment: 1, length: 1)
                    ])),
                    try .name("_STA", .integer(0x0F)),  // present, enabled, shown, functioning
                ]))
        }
        for (index, window) in description.virtioMMIODevices.enumerated() {
            devices.append(
                try .device(virtioMMIODeviceName(index), [
                    try .name("_HID", try .string(virtioMMIOHardwareID)),
                    try .name("_UID", .integer(UInt64(index))),
                    try .name("_CCA", .integer(1)),
                    try .name("_CRS", try .resourceTemplate([
                        .memory32Fixed(base: UInt32(truncatingIfNeeded: window.base), length: UInt32(truncatingIfNeeded: window.size), writable: true),
                        .interrupt([window.irq], edgeTriggered: true, activeLow: false, shared: false),
                    ])),
                ]))
        }
        return s0.bytes + s5.bytes + (try AMLTerm.scope("\\_SB", devices)).bytes
    }

    /// The Differentiated System Description Table (§5.2.11.1), revision 2 so AML integers are 64
    /// bits wide: the header and `makeDSDTDefinitions(description:)`.
    public static func makeDSDT(description: PlatformDescription) throws(FirmwareTableError) -> [UInt8] {
        make(signature: "DSDT", revision: 2, body: try makeDSDTDefinitions(description: description))
    }
}

/// A Generic Address Structure (ACPI 6.5 §5.2.3.2): where a register lives.
public struct GenericAddress: Equatable, Sendable {
    /// Address space ID: 0 system memory, 1 system I/O.
    public var addressSpace: UInt8
    public var bitWidth: UInt8
    public var bitOffset: UInt8
    /// Access size: 1 byte, 2 word, 3 dword, 4 qword.
    public var accessSize: UInt8
    public var address: UInt64

    public static let size = 12

    /// A one-byte register at I/O `port`, accessed a byte at a time.
    public static func ioByte(_ port: UInt16) -> GenericAddress {
        GenericAddress(addressSpace: 1, bitWidth: 8, bitOffset: 0, accessSize: 1, address: UInt64(port))
    }

    /// A `bits`-wide register block at I/O `port` with access size 0 ("undefined", what the
    /// legacy PM1 blocks use: the OS accesses their 16-bit registers as it knows them to be).
    public static func io(_ port: UInt16, bits: UInt8) -> GenericAddress {
        GenericAddress(addressSpace: 1, bitWidth: bits, bitOffset: 0, accessSize: 0, address: UInt64(port))
    }

    public var encoded: [UInt8] {
        var bytes = [addressSpace, bitWidth, bitOffset, accessSize]
        bytes.appendLittleEndian(address)
        return bytes
    }
}
