import Foundation
import Testing

/// `--print-config` and `--config`: the options, the value and its JSON describe one VM.
@Suite struct ConfigurationTests {
    static func temporaryFile(_ name: String, contents: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-\(name)-\(UUID().uuidString).json").path
        try contents.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// CLI → value → JSON → value → JSON: the second print is the first.
    @Test(arguments: [
        ["--kernel", "/boot/bzImage", "--initrd", "/boot/initrd", "--cmdline", "console=ttyS0 quiet root=\"/dev/vda\"", "--memory", "1G",
         "--cpus", "4", "--pit", "emulated", "--boot-entry", "32", "--cpu-features", "-xsave,-cx16", "--disk", "/d/a.img",
         "--disk", "/d/b.img,readonly", "--no-acpi"],
        ["--firmware", "/f/guest.bin", "--mode", "real", "--load", "0x7c00", "--entry", "0x7c10", "--memory", "64K", "--cpus", "2"],
    ])
    func optionsRoundTripThroughTheFile(options: [String]) throws {
        let printed = try SwiftKVMProcess.run(["run"] + options + ["--print-config"])
        #expect(printed.status == 0, "\(printed.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(printed.stdout.utf8)) as? [String: Any]
        #expect(object?["boot"] != nil)
        let path = try Self.temporaryFile("roundtrip", contents: printed.stdout)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let again = try SwiftKVMProcess.run(["run", "--config", path, "--print-config"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stdout == printed.stdout)
    }

    @Test func theFileSaysWhatTheOptionsSaid() throws {
        let printed = try SwiftKVMProcess.run(
            ["run", "--kernel", "bzImage", "--disk", "disk.img,readonly", "--cpus", "3", "--memory", "512M", "--print-config"])
        #expect(printed.status == 0, "\(printed.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(printed.stdout.utf8)) as? [String: Any])
        #expect(object["cpus"] as? Int == 3)
        #expect(object["memory_bytes"] as? Int == 512 << 20)
        let linux = (object["boot"] as? [String: Any])?["linux"] as? [String: Any]
        // Relative paths are made absolute, so the file works from any directory.
        #expect((linux?["kernel"] as? String)?.hasPrefix("/") == true)
        #expect((linux?["kernel"] as? String)?.hasSuffix("/bzImage") == true)
        #expect(linux?["cmdline"] as? String == "console=ttyS0 reboot=k panic=-1")
        let disks = object["disks"] as? [[String: Any]]
        #expect(disks?.count == 1)
        #expect(disks?.first?["read_only"] as? Bool == true)
    }

    @Test(.enabled(if: KVM.shouldRun, KVM.skipReason))
    func aConfigFileRunsTheGuest() throws {
        let path = try Self.temporaryFile(
            "firmware", contents: #"{"boot": {"firmware": {"path": "\#(Paths.firmware("exit-code"))", "mode": "real"}}}"#)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try SwiftKVMProcess.run(["run", "--config", path, "--time-limit", "20"])
        #expect(result.status == 42, "\(result.stderr)")
    }

    @Test(arguments: [
        (#"{"boot": {"firmware": {"path": "f"}}, "cpu": 2}"#, "cpu: unknown field 'cpu' in the VM configuration"),
        (#"{"boot": {"firmware": {"path": 7}}}"#, "boot.firmware.path has the wrong type: expected a string"),
        (#"{"cpus": 2}"#, "boot is missing"),
        (#"{"boot": {"linux": {"kernel": "k"}}, "disks": [{}]}"#, "disks[0].path is missing"),
        (#"{"boot": "#, "not valid JSON"),
        (#"[1, 2]"#, "the file has the wrong type"),
        (#"{"boot": {"linux": {"kernel": "k"}}, "cpus": 0}"#, "cpus '0' is not valid: from 1 to 255"),
        (#"{"boot": {"linux": {"kernel": "k"}}, "memory_bytes": 1000}"#, "memory_bytes '1000' is not valid"),
        (#"{"boot": {"linux": {"kernel": "k"}}, "on_reboot": "explode"}"#, "on_reboot"),
    ])
    func badFilesAreOneLineAndStatusTwo(json: String, message: String) throws {
        let path = try Self.temporaryFile("bad", contents: json)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try SwiftKVMProcess.run(["run", "--config", path, "--print-config"])
        #expect(result.status == 2)
        #expect(result.stderrLines.count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("swiftkvm: \(path): "), "\(result.stderr)")
        #expect(result.stderr.contains(message), "\(result.stderr)")
    }

    @Test func configAndVMOptionsDoNotMix() throws {
        let path = try Self.temporaryFile("mix", contents: #"{"boot": {"firmware": {"path": "f"}}}"#)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try SwiftKVMProcess.run(["run", "--config", path, "--cpus", "2", "--memory", "4M"])
        #expect(result.status == 2)
        #expect(result.stderr == "swiftkvm: --config describes the whole VM: drop --cpus, --memory (or edit the file)\n")
        let missing = try SwiftKVMProcess.run(["run", "--config", "/nonexistent/vm.json"])
        #expect(missing.status == 2)
        #expect(missing.stderr == "swiftkvm: /nonexistent/vm.json: No such file or directory\n")
    }
}
