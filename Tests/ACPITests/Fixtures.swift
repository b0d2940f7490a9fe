import ACPI

/// The virtio-mmio windows the VMM uses (`VirtioMMIOLayout` in Sources/VMM/VirtioDisks.swift):
/// 4 KiB from 0xD000_0000, IRQs 5, 6, 9, 10, 11, 12, 14, 15.
let vmmVirtioWindows: [VirtioMMIOWindow] = [5, 6, 9, 10, 11, 12, 14, 15].enumerated().map { index, irq in
    VirtioMMIOWindow(base: 0xD000_0000 + UInt64(index) * 0x1000, size: 0x1000, irq: UInt32(irq))
}

/// The machine the VMM builds, with `cpus` vCPUs and `disks` virtio-mmio disks.
func vmmPlatform(
    cpus: Int, disks: Int = 8, timerRouting: TimerRouting = .identity,
    model: PowerManagement.Model = .standardFixedHardware
) -> PlatformDescription {
    PlatformDescription(
        cpuCount: cpus, timerRouting: timerRouting, virtioMMIODevices: Array(vmmVirtioWindows.prefix(disks)),
        power: PowerManagement(model: model))
}

/// Both power-management models with their standard ports.
let bothModels: [PowerManagement.Model] = [.standardFixedHardware, .standardHardwareReduced]
