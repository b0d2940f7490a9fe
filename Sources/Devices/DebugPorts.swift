import Synchronization
import VMMCore

/// The debug-exit port (like QEMU's `isa-debug-exit`): a byte written to it ends the guest, and
/// that byte becomes the exit status. Firmware guests use it to report pass/fail.
///
/// The device does not stop anything itself: it hands the status to `onExit`, which the machine
/// wires to its stop request.
public final class DebugExitPort: BusDevice {
    /// The conventional port (`Firmware/include/guest.S.inc`).
    public static let port: UInt16 = 0xF4

    let onExit: (UInt8) -> Void

    public init(onExit: @escaping (UInt8) -> Void) { self.onExit = onExit }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0xFF }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, let status = data.first else { return }
        onExit(status)
    }
}

/// The milestone port: a guest writes any byte to it to say it reached a point worth timing (the
/// project's init scripts write 1 when user space is ready: `printf '\\001' | dd of=/dev/port bs=1
/// seek=246`). The byte goes to `onMilestone`; reads give all ones.
public final class MilestonePort: BusDevice {
    public static let port: UInt16 = 0xF6
    /// The byte an init writes when user space is ready.
    public static let userspaceReady: UInt8 = 1

    let onMilestone: (UInt8) -> Void

    public init(onMilestone: @escaping (UInt8) -> Void) { self.onMilestone = onMilestone }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0xFF)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, let value = data.first else { return }
        onMilestone(value)
    }
}

/// The pvpanic device's I/O port (QEMU's `pvpanic`, ACPI id QEMU0001): a guest kernel built with
/// `CONFIG_PVPANIC` writes bit 0 (PANICKED) when it panics, bit 1 (CRASH_LOADED) when a crash kernel
/// takes over. Reads tell the guest which events the device supports.
public final class PanicPort: BusDevice {
    public static let port: UInt16 = 0x505
    public static let panicked: UInt8 = 1 << 0
    public static let crashLoaded: UInt8 = 1 << 1

    let onPanic: () -> Void

    public init(onPanic: @escaping () -> Void) { self.onPanic = onPanic }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard offset == 0, !data.isEmpty else {
            data.initializeMemory(as: UInt8.self, repeating: 0xFF)
            return
        }
        data[0] = Self.panicked | Self.crashLoaded
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, let value = data.first, value & Self.panicked != 0 else { return }
        onPanic()
    }
}

/// An ACPI power-management control register: PM1_CNT of a fixed-hardware platform (16 bits,
/// SLP_TYP in bits 12:10, SLP_EN bit 13) or the sleep control register of a hardware-reduced one
/// (8 bits, SLP_TYP in bits 4:2, SLP_EN bit 5). Which bits mean "soft off" is the firmware
/// tables' business (`isPowerOff`, from the same description that wrote `\_S5_`); the port only
/// reads back `readValue` (e.g. SCI_EN: "already in ACPI mode") and reports the power-off.
public final class PowerControlPort: BusDevice {
    let readValue: UInt16
    let isPowerOff: (UInt16) -> Bool
    let onPowerOff: () -> Void

    public init(readValue: UInt16 = 0, isPowerOff: @escaping (UInt16) -> Bool, onPowerOff: @escaping () -> Void) {
        self.readValue = readValue
        self.isPowerOff = isPowerOff
        self.onPowerOff = onPowerOff
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for index in data.indices {
            let byte = Int(offset) + index
            data[index] = byte < 2 ? UInt8(truncatingIfNeeded: readValue >> (8 * byte)) : 0
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, !data.isEmpty else { return }
        let value = data.prefix(2).enumerated().reduce(UInt16(0)) { $0 | UInt16($1.element) << (8 * $1.offset) }
        if isPowerOff(value) { onPowerOff() }
    }
}

/// Registers that read as zero and ignore writes: the ACPI PM1 status and enable registers and the
/// sleep status register of a machine that has no ACPI events to report.
public final class ZeroPort: BusDevice {
    public init() {}
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.initializeMemory(as: UInt8.self, repeating: 0) }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {}
}

/// The value-report port: each write appends a value (zero-extended to 32 bits) that a test can
/// assert on afterwards. A `rep outsd` of four dwords reports four values.
public final class ReportPort: BusDevice, @unchecked Sendable {
    public static let port: UInt16 = 0xF8

    private let reported = Mutex<[UInt32]>([])
    /// At most this many values are kept, so a guest cannot exhaust host memory through the port.
    public let capacity: Int

    public init(capacity: Int = 1 << 16) { self.capacity = capacity }

    /// The values reported so far, in order.
    public var values: [UInt32] { reported.withLock { $0 } }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0xFF }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, !data.isEmpty else { return }
        var value: UInt32 = 0
        for (position, byte) in data.prefix(4).enumerated() { value |= UInt32(byte) << (8 * UInt32(position)) }
        reported.withLock { values in
            if values.count < capacity { values.append(value) }
        }
    }
}

/// A write-only stand-in for a 16550 UART at COM1: enough for firmware guests to print.
///
/// The transmit holding register (offset 0, DLAB clear) passes each byte to `output`; the line
/// status register (offset 5) always reads "transmitter empty" (THRE | TEMT = 0x60) so a guest that
/// polls it before each byte never waits; every other register reads 0. It raises no interrupts and
/// receives nothing — Linux needs the full 16550A model for that.
public final class TransmitOnlySerial: BusDevice {
    public static let com1: UInt16 = 0x3F8
    /// The UART occupies eight ports from its base.
    public static let portCount: UInt64 = 8

    let output: (UInt8) -> Void

    public init(output: @escaping (UInt8) -> Void) { self.output = output }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        data[0] = offset == 5 ? 0x60 : 0
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, let byte = data.first else { return }
        output(byte)
    }
}

/// The ACPI PM1 event block of a fixed-hardware platform (ACPI 6.5 §4.8.3.1): PM1_STS (16 bits)
/// then PM1_EN (16 bits), of which this machine has one event, the fixed power button
/// (PWRBTN_STS / PWRBTN_EN, bit 8 of each, §4.8.3.1.1–2).
///
/// `pressPowerButton()` sets PWRBTN_STS; the SCI is raised while any status bit has its enable
/// bit set, and drops when the guest clears the status by writing 1 to it. A press made while the
/// guest has not enabled the event yet (still booting, or before its ACPI driver cleared the
/// status at start-up) is held and delivered as soon as it sets PWRBTN_EN.
public final class PowerManagementEvents: BusDevice, @unchecked Sendable {
    // @unchecked: mutable state is in `state`, a Mutex.
    public static let powerButton: UInt16 = 1 << 8
    /// Status bits this block implements (the others read as zero and ignore writes).
    public static let implemented: UInt16 = powerButton

    struct State {
        var status: UInt16 = 0
        var enable: UInt16 = 0
        var heldPress = false
        var level = false
    }

    let state = Mutex(State())
    private let sci: (any InterruptLine)?

    /// `sci` is the SCI's interrupt line (level-triggered, active-high in this machine's MADT).
    public init(sci: (any InterruptLine)?) { self.sci = sci }

    /// A press of the power button, from the host.
    public func pressPowerButton() {
        update { state in
            state.status |= Self.powerButton
            if state.enable & Self.powerButton == 0 { state.heldPress = true }
        }
    }

    /// Whether the guest has enabled the power-button event (its ACPI driver listens).
    public var isPowerButtonEnabled: Bool { state.withLock { $0.enable & Self.powerButton != 0 } }

    /// PM1_STS and PM1_EN as the guest last left them.
    public var registers: (status: UInt16, enable: UInt16) { state.withLock { ($0.status, $0.enable) } }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let (status, enable) = registers
        let bytes = [UInt8(truncatingIfNeeded: status), UInt8(truncatingIfNeeded: status >> 8), UInt8(truncatingIfNeeded: enable), UInt8(truncatingIfNeeded: enable >> 8)]
        for index in data.indices {
            let (position, overflow) = offset.addingReportingOverflow(UInt64(index))
            data[index] = !overflow && position < 4 ? bytes[Int(position)] : 0
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        update { state in
            for (index, byte) in data.enumerated() {
                let (position, overflow) = offset.addingReportingOverflow(UInt64(index))
                guard !overflow, position < 4 else { continue }
                let value = UInt16(byte) << (position % 2 == 0 ? 0 : 8)
                if position < 2 {
                    // Status bits are write-1-to-clear.
                    state.status &= ~(value & Self.implemented)
                } else {
                    let mask: UInt16 = position == 2 ? 0x00FF : 0xFF00
                    state.enable = (state.enable & ~mask) | (value & mask & Self.implemented)
                }
            }
            if state.heldPress, state.enable & Self.powerButton != 0 {
                state.heldPress = false
                state.status |= Self.powerButton
            }
        }
    }

    /// Applies `change`, then drives the SCI from STS & EN, only when its level changes (under
    /// the lock, so two changes from two threads reach the line in order).
    func update(_ change: (inout State) -> Void) {
        state.withLock { state in
            change(&state)
            let level = state.status & state.enable != 0
            guard level != state.level else { return }
            state.level = level
            sci?.setLevel(level)
        }
    }
}
