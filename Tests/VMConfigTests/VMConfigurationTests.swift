import Foundation
import Testing
import VMConfig

@Suite struct VMConfigurationTests {
    static let full = VMConfiguration(
        name: "web-1", boot: .linux(LinuxBootSource(kernel: "/k/bzImage", initrd: "/k/initrd", commandLine: "console=ttyS0 a=\"b c\"", entry: "32")),
        memoryBytes: 512 << 20, cpus: 2, cpuFeatures: ["-xsave", "-cx16"], pit: .emulated, acpi: false,
        disks: [DiskConfig(id: "root", path: "/d/root.img"), DiskConfig(path: "/d/data.img", readOnly: true, shareable: true)],
        networkInterfaces: [
            NetworkInterfaceConfig(id: "eth0", backend: .tap(name: "tap0"), mac: "52:54:00:12:34:56"),
            NetworkInterfaceConfig(backend: .user(forwards: [PortForward(hostAddress: "127.0.0.1", hostPort: 2222, guestPort: 22)])),
        ],
        console: ConsoleConfig(output: .file, path: "/tmp/console.txt", logPath: "/tmp/log"), onPowerOff: .destroy,
        onReboot: .restart, onCrash: .preserve)

    func encode(_ configuration: VMConfiguration) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(configuration)
    }

    func decode(_ json: String) throws -> VMConfiguration {
        try JSONDecoder().decode(VMConfiguration.self, from: Data(json.utf8))
    }

    @Test func roundTripsThroughJSON() throws {
        let data = try encode(Self.full)
        let back = try JSONDecoder().decode(VMConfiguration.self, from: data)
        #expect(back == Self.full)
        #expect(try encode(back) == data)
        try Self.full.validate()
    }

    @Test func firmwareRoundTrips() throws {
        let configuration = VMConfiguration(boot: .firmware(FirmwareBootSource(path: "f.bin", mode: "real", loadAddress: 0x7c00, entry: 0x7c10)))
        #expect(configuration.memoryBytes == VMConfiguration.defaultFirmwareMemory)
        let back = try JSONDecoder().decode(VMConfiguration.self, from: try encode(configuration))
        #expect(back == configuration)
    }

    @Test func onlyBootIsRequired() throws {
        let configuration = try decode(#"{"boot": {"linux": {"kernel": "bzImage"}}}"#)
        #expect(configuration == VMConfiguration(boot: .linux(LinuxBootSource(kernel: "bzImage"))))
        #expect(configuration.memoryBytes == 256 << 20)
        #expect(configuration.onReboot == .destroy)
        #expect(configuration.console.output == .stdio)
    }

    @Test(arguments: [
        (#"{"boot": {"linux": {"kernel": "k"}}, "cpu": 4}"#, "cpu"),
        (#"{"boot": {"linux": {"kernel": "k", "cmd_line": "x"}}}"#, "cmd_line"),
        (#"{"boot": {"linux": {"kernel": "k"}}, "disks": [{"path": "d", "readonly": true}]}"#, "readonly"),
        (#"{"boot": {"linux": {"kernel": "k"}}, "console": {"out": "file"}}"#, "out"),
        (#"{"boot": {"linux": {"kernel": "k"}}, "network_interfaces": [{"user": {"forward": []}}]}"#, "forward"),
    ])
    func unknownFieldsAreRefused(json: String, field: String) {
        do {
            _ = try decode(json)
            Issue.record("decoded despite the unknown field \(field)")
        } catch let DecodingError.dataCorrupted(context) {
            #expect(context.debugDescription.contains("unknown field '\(field)'"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func bootNeedsExactlyOneSource() {
        #expect(throws: DecodingError.self) { try decode(#"{"boot": {}}"#) }
        #expect(throws: DecodingError.self) {
            try decode(#"{"boot": {"linux": {"kernel": "k"}, "firmware": {"path": "f"}}}"#)
        }
        #expect(throws: DecodingError.self) { try decode(#"{"boot": {"linux": {"kernel": 3}}}"#) }
    }

    @Test func lifecycleActionsDecodeByName() throws {
        let configuration = try decode(
            #"{"boot": {"firmware": {"path": "f"}}, "on_poweroff": "preserve", "on_reboot": "restart", "on_crash": "destroy"}"#)
        #expect(configuration.onPowerOff == .preserve)
        #expect(configuration.onReboot == .restart)
        #expect(throws: DecodingError.self) { try decode(#"{"boot": {"firmware": {"path": "f"}}, "on_reboot": "reboot"}"#) }
    }

    static func invalid(_ change: (inout VMConfiguration) -> Void) -> ConfigurationError? {
        var configuration = VMConfiguration(boot: .linux(LinuxBootSource(kernel: "k")))
        change(&configuration)
        do {
            try configuration.validate()
            return nil
        } catch {
            return error
        }
    }

    @Test func validationNamesTheField() {
        #expect(Self.invalid { $0.memoryBytes = 4095 }?.description.hasPrefix("memory_bytes '4095'") == true)
        #expect(Self.invalid { $0.memoryBytes = 0 } != nil)
        #expect(Self.invalid { $0.cpus = 0 }?.description.hasPrefix("cpus '0'") == true)
        #expect(Self.invalid { $0.cpus = 256 } != nil)
        #expect(Self.invalid { $0.cpuFeatures = ["xsave"] }?.description.hasPrefix("cpu_features 'xsave'") == true)
        #expect(Self.invalid { $0.boot = .linux(LinuxBootSource(kernel: "")) } != nil)
        #expect(Self.invalid { $0.boot = .linux(LinuxBootSource(kernel: "k", entry: "16")) }?.description.contains("boot.linux.entry") == true)
        #expect(Self.invalid { $0.boot = .firmware(FirmwareBootSource(path: "f", mode: "smm")) } != nil)
        #expect(Self.invalid { $0.disks = [DiskConfig(path: "")] }?.description.hasPrefix("disks[0].path") == true)
        #expect(Self.invalid { $0.disks = (0..<9).map { DiskConfig(path: "d\($0)") } } == .tooMany(field: "disks and network_interfaces", count: 9, maximum: 8))
        #expect(Self.invalid { $0.disks = [DiskConfig(id: "a", path: "x"), DiskConfig(id: "a", path: "y")] } == .duplicate(field: "disks[].id", value: "a"))
        #expect(Self.invalid { $0.networkInterfaces = [NetworkInterfaceConfig(backend: .tap(name: "a-very-long-tap-name"))] } != nil)
        #expect(Self.invalid { $0.networkInterfaces = [NetworkInterfaceConfig(backend: .tap(name: "t"), mac: "01:00:5e:00:00:01")] }?.description.contains("unicast") == true)
        #expect(Self.invalid { $0.networkInterfaces = [NetworkInterfaceConfig(backend: .tap(name: "t"), mac: "52:54:00:12:34")] } != nil)
        #expect(Self.invalid { $0.networkInterfaces = [NetworkInterfaceConfig(backend: .user(forwards: [PortForward(hostPort: 0, guestPort: 22)]))] } != nil)
        #expect(Self.invalid { $0.console = ConsoleConfig(output: .file) }?.description.hasPrefix("console.path") == true)
        #expect(Self.invalid { $0.console = ConsoleConfig(output: .stdio, path: "x") } != nil)
        #expect(Self.invalid { $0.name = "Web" } != nil)
        #expect(Self.invalid { $0.name = String(repeating: "a", count: 64) } != nil)
        #expect(Self.invalid { $0.name = "-a" } != nil)
        #expect(Self.invalid { $0.name = "a.b_c-1" } == nil)
        #expect(Self.invalid { $0.name = "" } != nil)
    }

    @Test func firmwareGuestsHaveNoVirtioDevices() {
        let error = Self.invalid {
            $0.boot = .firmware(FirmwareBootSource(path: "f"))
            $0.disks = [DiskConfig(path: "d")]
        }
        #expect(error?.description.contains("firmware guest has no virtio devices") == true)
    }

    @Test func macAddressesParse() {
        #expect(MACAddress("52:54:00:AB:cd:01")?.description == "52:54:00:ab:cd:01")
        #expect(MACAddress("52-54-00-ab-cd-01")?.bytes == [0x52, 0x54, 0, 0xab, 0xcd, 1])
        #expect(MACAddress("52:54:00:ab:cd") == nil)
        #expect(MACAddress("52:54:00:ab:cd:1") == nil)
        #expect(MACAddress("52:54:00:ab:cd:zz") == nil)
        #expect(MACAddress("ff:ff:ff:ff:ff:ff")?.isUnicast == false)
    }
}
