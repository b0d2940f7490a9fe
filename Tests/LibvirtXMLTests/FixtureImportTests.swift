import Foundation
import LibvirtXML
import Testing
import VMConfig

/// The fixtures libvirt's own tools wrote (Fixtures/README.md), imported: every decision (its kind
/// and XPath) and the configuration that results.
@Suite struct FixtureImportTests {
    static let kernel = "/var/cache/swiftkvm/test-kernel/bzImage"
    static let initrd = "/var/cache/swiftkvm/test-initramfs.cpio"
    static let disks = "/tmp/swiftkvm-libvirt-fixtures"

    /// What virt-install writes for a direct kernel boot with `--console pty` and nothing else.
    static func base(_ name: String, initrd: String? = nil, cmdline: String = "console=ttyS0", memory: Int = 256 << 20) -> VMConfiguration {
        VMConfiguration(
            name: name, boot: .linux(LinuxBootSource(kernel: kernel, initrd: initrd, commandLine: cmdline)), memoryBytes: memory,
            cpus: 1, acpi: false, console: ConsoleConfig(output: .stdio), onPowerOff: .destroy, onReboot: .restart, onCrash: .destroy)
    }

    static var expectedConfigurations: [String: VMConfiguration] {
        var result: [String: VMConfiguration] = [:]
        result["no-initrd"] = base("no-initrd", cmdline: "console=ttyS0 reboot=k panic=-1")
        var testKernel = base("test-kernel", initrd: initrd, cmdline: "console=ttyS0 reboot=k panic=-1 quiet")
        testKernel.disks = [DiskConfig(path: "\(disks)/root.img")]
        result["test-kernel"] = testKernel
        var twoDisks = base("two-disks", initrd: initrd, cmdline: "console=ttyS0 root=/dev/vda", memory: 512 << 20)
        twoDisks.disks = [DiskConfig(path: "\(disks)/root.img"), DiskConfig(path: "\(disks)/data.img", readOnly: true)]
        result["two-disks"] = twoDisks
        // Document order vdc, vda, vdb: the guest sees them by target.
        var targets = base("explicit-targets")
        targets.disks = [DiskConfig(path: "\(disks)/a.img"), DiskConfig(path: "\(disks)/b.img", shareable: true), DiskConfig(path: "\(disks)/c.img")]
        result["explicit-targets"] = targets
        var four = base("four-cpus-1g", initrd: initrd, memory: 1 << 30)
        four.cpus = 4
        result["four-cpus-1g"] = four
        var actions = base("on-actions")
        actions.onPowerOff = .preserve
        actions.onReboot = .restart
        actions.onCrash = .destroy
        result["on-actions"] = actions
        var log = base("console-log")
        log.console = ConsoleConfig(output: .stdio, logPath: "/tmp/swiftkvm-console.log")
        result["console-log"] = log
        var file = base("serial-file")
        file.console = ConsoleConfig(output: .file, path: "/tmp/swiftkvm-serial.out")
        result["serial-file"] = file
        // Entities decoded, both double spaces kept.
        result["special-cmdline"] = base("special-cmdline", cmdline: #"console=ttyS0  init=/bin/sh -c echo a<b && echo \$HOME  x=1"#)
        var spice = base("spice")
        spice.disks = [DiskConfig(path: "\(disks)/root.img")]
        result["spice"] = spice
        var ethernet = base("nic-ethernet")
        ethernet.networkInterfaces = [NetworkInterfaceConfig(backend: .tap(name: "tap0"), mac: "52:54:00:12:34:56")]
        result["nic-ethernet"] = ethernet
        var user = base("nic-user")
        user.networkInterfaces = [
            NetworkInterfaceConfig(backend: .user(forwards: [PortForward(hostAddress: "127.0.0.1", hostPort: 2222, guestPort: 22)]), mac: "52:54:00:12:34:57")
        ]
        result["nic-user"] = user
        // A real qemu:///session daemon's define and running dumpxml of the test kernel: one VM.
        var session = VMConfiguration(
            name: "session-test",
            boot: .linux(LinuxBootSource(kernel: kernel, initrd: initrd, commandLine: "console=ttyS0 reboot=k panic=-1 quiet")),
            memoryBytes: 256 << 20, cpus: 1, acpi: true, disks: [DiskConfig(path: "/tmp/swiftkvm-libvirt-session/root.img")],
            networkInterfaces: [NetworkInterfaceConfig(backend: .user(forwards: []), mac: "52:54:00:3d:8e:8a")],
            console: ConsoleConfig(output: .stdio), onPowerOff: .destroy, onReboot: .restart, onCrash: .destroy)
        result["session-defined"] = session
        result["session-running"] = session
        return result
    }

    static let expectedDecisions: [String: [(Decision.Kind, String)]] = [
        "session-defined": [
            (.taken, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.warned, "/domain/vcpu/@placement"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.warned, "/domain/os/type/@machine"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/os/cmdline"),
            (.warned, "/domain/os/boot"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/features/apic"),
            (.warned, "/domain/cpu"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/clock/timer[1]"),
            (.taken, "/domain/clock/timer[2]"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/disk/address"),
            (.taken, "/domain/devices/disk"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/interface/mac/@address"),
            (.taken, "/domain/devices/interface/model/@type"),
            (.taken, "/domain/devices/interface"),
            (.warned, "/domain/devices/input[1]"),
            (.warned, "/domain/devices/audio"),
            (.warned, "/domain/devices/memballoon"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/devices/serial"),
        ],
        "session-running": [
            (.taken, "/domain/@type"),
            (.warned, "/domain/@id"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.warned, "/domain/vcpu/@placement"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.warned, "/domain/os/type/@machine"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/os/cmdline"),
            (.warned, "/domain/os/boot"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/features/apic"),
            (.warned, "/domain/cpu"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/clock/timer[1]"),
            (.taken, "/domain/clock/timer[2]"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/disk/address"),
            (.taken, "/domain/devices/disk"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/interface/mac/@address"),
            (.taken, "/domain/devices/interface/model/@type"),
            (.taken, "/domain/devices/interface"),
            (.warned, "/domain/devices/input[1]"),
            (.warned, "/domain/devices/audio"),
            (.warned, "/domain/devices/memballoon"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/devices/serial"),
        ],
        "console-log": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/devices/console/log"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "disk-boot": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.warned, "/domain/os/boot"),
            (.refused, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.taken, "/domain/devices/disk"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "explicit-targets": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.taken, "/domain/devices/disk[1]"),
            (.taken, "/domain/devices/disk[2]"),
            (.taken, "/domain/devices/disk[3]/shareable"),
            (.taken, "/domain/devices/disk[3]"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "four-cpus-1g": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "nic-bridge": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.refused, "/domain/devices/interface/@type"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "nic-ethernet": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/interface/mac/@address"),
            (.taken, "/domain/devices/interface/model/@type"),
            (.taken, "/domain/devices/interface"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "nic-network": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.refused, "/domain/devices/interface/@type"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "nic-user": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/interface/mac/@address"),
            (.taken, "/domain/devices/interface/model/@type"),
            (.taken, "/domain/devices/interface/backend"),
            (.taken, "/domain/devices/interface/portForward/range"),
            (.taken, "/domain/devices/interface"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "no-initrd": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "on-actions": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.warned, "/domain/on_crash"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
        ],
        "qcow2": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.taken, "/domain/devices/disk[1]"),
            (.refused, "/domain/devices/disk[2]/driver/@type"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "serial-file": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/serial"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "special-cmdline": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "spice": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/features/pae"),
            (.warned, "/domain/features/vmport"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.taken, "/domain/devices/disk"),
            (.warned, "/domain/devices/controller[1]"),
            (.warned, "/domain/devices/channel"),
            (.warned, "/domain/devices/input"),
            (.warned, "/domain/devices/graphics"),
            (.warned, "/domain/devices/sound"),
            (.warned, "/domain/devices/video"),
            (.warned, "/domain/devices/redirdev[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "test-dumpxml": [
            (.warned, "/domain/@type"),
            (.warned, "/domain/@id"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.warned, "/domain/currentMemory"),
            (.warned, "/domain/vcpu/@placement"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.warned, "/domain/os/boot"),
            (.refused, "/domain/os/kernel"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/clock/@offset"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
            (.warned, "/domain/devices/disk/address"),
            (.taken, "/domain/devices/disk"),
            (.refused, "/domain/devices/interface/@type"),
            (.warned, "/domain/devices/memballoon"),
            (.taken, "/domain/devices/serial"),
            (.taken, "/domain/features/acpi"),
        ],
        "test-kernel": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.taken, "/domain/devices/disk"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ],
        "two-disks": [
            (.warned, "/domain/@type"),
            (.taken, "/domain/name"),
            (.warned, "/domain/uuid"),
            (.taken, "/domain/memory"),
            (.taken, "/domain/currentMemory"),
            (.taken, "/domain/vcpu"),
            (.taken, "/domain/os/type"),
            (.taken, "/domain/os/type/@arch"),
            (.taken, "/domain/os/kernel"),
            (.taken, "/domain/os/initrd"),
            (.taken, "/domain/os/cmdline"),
            (.taken, "/domain/features/pae"),
            (.taken, "/domain/features/acpi"),
            (.taken, "/domain/clock/@offset"),
            (.warned, "/domain/pm"),
            (.warned, "/domain/devices/emulator"),
            (.taken, "/domain/devices/disk[1]"),
            (.taken, "/domain/devices/disk[2]/readonly"),
            (.taken, "/domain/devices/disk[2]"),
            (.warned, "/domain/devices/controller[1]"),
            (.taken, "/domain/devices/console"),
            (.taken, "/domain/on_poweroff"),
            (.taken, "/domain/on_reboot"),
            (.taken, "/domain/on_crash"),
        ]
    ]

    static let refusedFixtures = ["qcow2", "nic-network", "nic-bridge", "disk-boot", "test-dumpxml"]

    @Test func everyFixtureHasItsCommandAndExpectations() throws {
        let names = try Fixtures.names()
        #expect(names.count >= 19)
        for name in names {
            #expect(FileManager.default.fileExists(atPath: Fixtures.path("\(name).cmd")), "\(name) has no .cmd")
            #expect(Self.expectedDecisions[name] != nil, "\(name) has no expected decisions")
            #expect(Self.expectedConfigurations[name] != nil || Self.refusedFixtures.contains(name), "\(name) has no expected configuration")
        }
    }

    @Test(arguments: try Fixtures.names())
    func decisionsAndConfiguration(name: String) throws {
        let xml = try Fixtures.text(name)
        let decisions: [Decision]
        var configuration: VMConfiguration?
        do {
            let result = try LibvirtImport.importDomain(xml: xml)
            decisions = result.decisions
            configuration = result.configuration
        } catch {
            guard case .refused(let all) = error else {
                Issue.record("\(name): \(error)")
                return
            }
            decisions = all
        }
        let got = decisions.map { "\($0.kind.rawValue) \($0.xpath)" }
        let expected = (Self.expectedDecisions[name] ?? []).map { "\($0.0.rawValue) \($0.1)" }
        #expect(got == expected, "\(name)")
        #expect(decisions.allSatisfy { !$0.message.isEmpty })
        if Self.refusedFixtures.contains(name) {
            #expect(configuration == nil, "\(name) should be refused")
        } else {
            #expect(configuration == Self.expectedConfigurations[name], "\(name)")
            try configuration?.validate()
        }
    }

    @Test func refusalsSayWhatToDo() throws {
        func refusal(_ name: String) throws -> Decision? {
            let xml = try Fixtures.text(name)
            do {
                _ = try LibvirtImport.importDomain(xml: xml)
                return nil
            } catch { return error.refusals.first }
        }
        let qcow2 = try #require(try refusal("qcow2"))
        #expect(qcow2.xpath == "/domain/devices/disk[2]/driver/@type")
        #expect(qcow2.message.contains("qemu-img convert -O raw \(Self.disks)/disk.qcow2 \(Self.disks)/disk.raw"))
        #expect(qcow2.droppable)
        let network = try #require(try refusal("nic-network"))
        #expect(network.message.contains("ip tuntap add dev tap0 mode tap"))
        #expect(network.message.contains("type='ethernet'"))
        let bridge = try #require(try refusal("nic-bridge"))
        #expect(bridge.message.contains("master br0"))
        let diskBoot = try #require(try refusal("disk-boot"))
        #expect(diskBoot.xpath == "/domain/os/kernel")
        #expect(diskBoot.message.contains("<kernel>"))
        #expect(!diskBoot.droppable)
    }

    @Test func dropUnsupportedLeavesOutOptionalDevicesOnly() throws {
        let options = ImportOptions(dropUnsupported: true)
        let qcow2 = try LibvirtImport.importDomain(xml: try Fixtures.text("qcow2"), options: options)
        #expect(qcow2.configuration.disks == [DiskConfig(path: "\(Self.disks)/root.img")])
        #expect(qcow2.decisions.contains { $0.kind == .warned && $0.xpath == "/domain/devices/disk[2]/driver/@type" && $0.droppable })
        for name in ["nic-network", "nic-bridge"] {
            let result = try LibvirtImport.importDomain(xml: try Fixtures.text(name), options: options)
            #expect(result.configuration.networkInterfaces.isEmpty)
            #expect(!result.decisions.contains { $0.kind == .refused })
        }
        // No kernel is not an optional device.
        #expect(throws: LibvirtImportError.self) { try LibvirtImport.importDomain(xml: try Fixtures.text("disk-boot"), options: options) }
    }
}

enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

    static func path(_ file: String) -> String { "\(directory)/\(file)" }

    static func names() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".xml") }.map { String($0.dropLast(4)) }.sorted()
    }

    static func text(_ name: String) throws -> String { try String(contentsOfFile: path("\(name).xml"), encoding: .utf8) }
}
