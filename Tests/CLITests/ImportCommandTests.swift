import Foundation
import Testing

/// `swiftkvm import` and `swiftkvm export` as a user meets them, on the fixtures libvirt's tools
/// wrote (Tests/LibvirtXMLTests/Fixtures), and one VM that virt-install describes, imported and booted.
@Suite struct ImportCommandTests {
    static func fixture(_ name: String) -> String { "\(Paths.root)/Tests/LibvirtXMLTests/Fixtures/\(name).xml" }

    /// A fresh folder for one test (Swift Testing runs tests in parallel: the pid alone is not unique).
    static func temporaryDirectory(_ label: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-import-\(label)-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func dryRunPrintsADecisionPerLineThenTheConfiguration() throws {
        let result = try SwiftKVMProcess.run(["import", Self.fixture("two-disks"), "--dry-run"])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("taken    /domain/devices/disk[2]/readonly: read-only"))
        #expect(lines.contains { $0.hasPrefix("warned   /domain/devices/controller[1]: ") })
        let json = try #require(result.stdout.range(of: "\n{").map { String(result.stdout[$0.lowerBound...]) })
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["name"] as? String == "two-disks")
        #expect((object["disks"] as? [[String: Any]])?.count == 2)

        let asJSON = try SwiftKVMProcess.run(["import", Self.fixture("two-disks"), "--dry-run", "--json"])
        let report = try #require(try JSONSerialization.jsonObject(with: Data(asJSON.stdout.utf8)) as? [String: Any])
        let decisions = try #require(report["decisions"] as? [[String: Any]])
        #expect(decisions.contains { $0["xpath"] as? String == "/domain/devices/disk[2]/readonly" && $0["kind"] as? String == "taken" })
        #expect((report["configuration"] as? [String: Any])?["name"] as? String == "two-disks")
    }

    @Test func refusalsAreOneLineAndStatusTwo() throws {
        let qcow2 = try SwiftKVMProcess.run(["import", Self.fixture("qcow2"), "--output", "/nonexistent/never.json"])
        #expect(qcow2.status == 2)
        #expect(qcow2.stderrLines.count == 1, "\(qcow2.stderr)")
        #expect(qcow2.stderr.contains("cannot import /domain/devices/disk[2]/driver/@type"))
        #expect(qcow2.stderr.contains("qemu-img convert -O raw"))
        #expect(qcow2.stderr.contains("--drop-unsupported"))

        // With --dry-run the decisions (the refusal among them) are printed first.
        let dry = try SwiftKVMProcess.run(["import", Self.fixture("disk-boot"), "--dry-run"])
        #expect(dry.status == 2)
        #expect(dry.stdout.contains("refused  /domain/os/kernel: no <kernel>"))
        #expect(dry.stderrLines.count == 1)

        for (arguments, message) in [
            (["import", "/nonexistent/d.xml", "--dry-run"], "/nonexistent/d.xml: No such file or directory"),
            (["import", "/etc/passwd", "--dry-run"], "not well-formed XML at line 1"),
            (["import", Self.fixture("two-disks"), "--dry-run", "--output", "/tmp/never.json"], "--dry-run writes nothing"),
            (["import", Self.fixture("two-disks"), "--dry-run", "--name", "Bad Name"], "--name: name 'Bad Name' is not valid"),
            (["export"], "nothing to export: give a kept VM's name or --config FILE.json"),
            (["export", "web1", "--config", "/etc/hostname"], "give either a VM name or --config, not both"),
            (["export", "--config", "/etc/hostname", "--format", "yaml"], "--format must be libvirt, json or cmdline"),
            (["export", "--config", "/etc/passwd"], "/etc/passwd: not valid JSON"),
        ] {
            let result = try SwiftKVMProcess.run(arguments)
            #expect(result.status == 2, "\(arguments): \(result.stderr)")
            #expect(result.stderrLines.count == 1, "\(arguments): \(result.stderr)")
            #expect(result.stderr.hasPrefix("swiftkvm: "))
            #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)")
        }
    }

    /// Without --output the domain becomes a kept VM (issue 11's folder), under its name or --name;
    /// `export NAME` gives the same configuration back that `import --output` writes.
    @Test func importKeepsTheVMAndExportByNameGivesItBack() throws {
        let home = try KeptHome()
        let imported = try home.run(["import", Self.fixture("two-disks")])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdout.hasPrefix("imported two-disks from "), "\(imported.stdout)")
        let again = try home.run(["import", Self.fixture("two-disks")])
        #expect(again.status == 1)
        #expect(again.stderr.contains("a VM named 'two-disks' exists already"), "\(again.stderr)")
        let renamed = try home.run(["import", Self.fixture("two-disks"), "--name", "copy"])
        #expect(renamed.status == 0, "\(renamed.stderr)")
        let names = try home.list().compactMap { $0["name"] as? String }.sorted()
        #expect(names == ["copy", "two-disks"])
        #expect(try home.events("copy") == ["created"])
        let badName = try home.run(["import", Self.fixture("two-disks"), "--name", "Bad Name"])
        #expect(badName.status == 2)

        let directory = try Self.temporaryDirectory("kept")
        defer { try? FileManager.default.removeItem(at: directory) }
        let output = directory.appendingPathComponent("vm.json").path
        #expect(try home.run(["import", Self.fixture("two-disks"), "--output", output]).status == 0)
        let exported = try home.run(["export", "two-disks", "--format", "json"])
        #expect(exported.status == 0, "\(exported.stderr)")
        let written = try String(contentsOfFile: output, encoding: .utf8)
        #expect(exported.stdout == written, "export NAME prints what import --output wrote")
        let xml = try home.run(["export", "copy", "--format", "libvirt"])
        #expect(xml.status == 0)
        #expect(xml.stdout.hasPrefix("<domain type='kvm'>\n  <name>copy</name>"), "\(xml.stdout.prefix(80))")
        let missing = try home.run(["export", "nosuch"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("there is no VM named 'nosuch'"), "\(missing.stderr)")
    }

    /// import --output writes what `run --config` reads; export gives it back in each format.
    @Test func outputIsAConfigurationRunAcceptsAndExportPrints() throws {
        let directory = try Self.temporaryDirectory("output")
        defer { try? FileManager.default.removeItem(at: directory) }
        let output = directory.appendingPathComponent("vm.json").path
        let imported = try SwiftKVMProcess.run(["import", Self.fixture("qcow2"), "--drop-unsupported", "--name", "converted", "--output", output])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stderr.contains("imported converted into \(output)"))
        let again = try SwiftKVMProcess.run(["import", Self.fixture("qcow2"), "--drop-unsupported", "--output", output])
        #expect(again.status == 2)
        #expect(again.stderr.contains("exists: choose another file or remove it"))

        let printed = try SwiftKVMProcess.run(["run", "--config", output, "--print-config"])
        #expect(printed.status == 0, "\(printed.stderr)")
        #expect(printed.stdout.contains(#""name" : "converted""#))
        let json = try SwiftKVMProcess.run(["export", "--config", output, "--format", "json"])
        #expect(json.stdout == printed.stdout)

        let xml = try SwiftKVMProcess.run(["export", "--config", output, "--format", "libvirt"])
        #expect(xml.status == 0)
        #expect(xml.stdout.hasPrefix("<domain type='kvm'>\n  <name>converted</name>"))
        let command = try SwiftKVMProcess.run(["export", "--config", output, "--format", "cmdline"])
        #expect(command.status == 0)
        #expect(command.stdout == "swiftkvm run --kernel /var/cache/swiftkvm/test-kernel/bzImage --cmdline console=ttyS0 --no-acpi --disk /tmp/swiftkvm-libvirt-fixtures/root.img\n")
        #expect(command.stderr.contains("no 'swiftkvm run' option yet for: name (converted), on_reboot (restart)"))
    }

    static var testInitramfs: String {
        "\(ProcessInfo.processInfo.environment["SWIFTKVM_CACHE"] ?? "/var/cache/swiftkvm")/test-initramfs.cpio"
    }

    static let virtInstall = ["/usr/bin/virt-install", "/bin/virt-install"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// The end-to-end path of issue 12: virt-install describes a VM for the test kernel with a raw
    /// disk; swiftkvm imports it and runs it with `run --config`; the guest's shell reads the disk
    /// and its md5sum matches the host file's. One boot (1–3 minutes on KVM-PVM), under a time limit.
    @Test(
        .enabled(
            if: KVM.shouldRun && (KVM.isCI || (FileManager.default.fileExists(atPath: Paths.testKernel) && virtInstall != nil)),
            "needs /dev/kvm, the cached test kernel (make test-guest) and virt-install (apt-get install virtinst)"))
    func aVirtInstallDomainBootsAndReadsItsDisk() throws {
        let directory = try Self.temporaryDirectory("boot")
        defer { try? FileManager.default.removeItem(at: directory) }
        let disk = directory.appendingPathComponent("disk.img").path
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try Data(bytes).write(to: URL(fileURLWithPath: disk))
        let hostSum = try Self.md5(disk)

        let xml = directory.appendingPathComponent("vm.xml").path
        let install = try ProcessRun.run(
            Self.virtInstall ?? "/usr/bin/virt-install",
            [
                "--connect", "test:///default", "--print-xml", "--osinfo", "detect=off,require=off", "--noautoconsole", "--graphics", "none",
                "--name", "e2e", "--memory", "256", "--vcpus", "1",
                "--boot", "kernel=\(Paths.testKernel),initrd=\(Self.testInitramfs),kernel_args='console=ttyS0 reboot=k panic=-1 quiet'",
                "--disk", "path=\(disk),driver.name=qemu,driver.type=raw,bus=virtio", "--network", "none", "--console", "pty",
                // libvirt's default on_reboot is restart: the guest's reboot -f then ends the run.
                "--events", "on_reboot=destroy",
            ], timeout: 120)
        #expect(install.status == 0, "\(install.stderr)")
        try install.stdout.write(toFile: xml, atomically: true, encoding: .utf8)

        let config = directory.appendingPathComponent("vm.json").path
        let imported = try SwiftKVMProcess.run(["import", xml, "--output", config])
        #expect(imported.status == 0, "\(imported.stderr)")

        let script = directory.appendingPathComponent("input.txt").path
        try "md5sum /dev/vda; echo MD5-$((2 + 2))\nreboot -f\n".write(toFile: script, atomically: true, encoding: .utf8)
        let run = try ProcessRun.run(
            SwiftKVMProcess.executable, ["run", "--config", config, "--time-limit", "600"], stdin: script, timeout: 660)
        #expect(run.stdout.contains("SWIFTKVM-INIT-READY"), "\(run.stdout.suffix(2000)) \(run.stderr)")
        #expect(run.stdout.contains("\(hostSum)  /dev/vda"), "\(run.stdout.suffix(2000)) \(run.stderr)")
        #expect(run.stdout.contains("MD5-4"))
        #expect(run.status == 0, "\(run.stderr)")
    }

    static func md5(_ path: String) throws -> String {
        let result = try ProcessRun.run("/usr/bin/md5sum", [path], timeout: 60)
        return String(result.stdout.prefix(32))
    }
}

/// A child process with optional standard input from a file and a deadline after which it is terminated.
enum ProcessRun {
    static func run(_ executable: String, _ arguments: [String], stdin: String? = nil, timeout: Double) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = stdin.flatMap { FileHandle(forReadingAtPath: $0) } ?? FileHandle.nullDevice
        try process.run()
        let watchdog = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        // Read standard error on another thread so neither pipe can fill and stall the child.
        let errorData = LockedData()
        let reader = Thread { errorData.set(errors.fileHandleForReading.readDataToEndOfFile()) }
        reader.start()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        while !errorData.isSet { Thread.sleep(forTimeInterval: 0.01) }
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: errorData.value, as: UTF8.self))
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data: Data?
    func set(_ value: Data) { lock.withLock { data = value } }
    var isSet: Bool { lock.withLock { data != nil } }
    var value: Data { lock.withLock { data ?? Data() } }
}
