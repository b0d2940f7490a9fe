import Foundation
import Glibc
import Testing
import VMConfig
import Virtio
@testable import VMM

/// The test kernel on a NIC, one boot per backend and many checks per boot (a boot takes minutes on
/// KVM-PVM). Every host the guest talks to lives in a namespace the test makes: a tap's peer at
/// 192.0.2.1, or passt in a namespace whose only interface is a veth at 198.51.100.2.
@Suite(.enabled(if: NetworkGuestAssets.shouldRun, NetworkGuestAssets.skipReason))
struct LinuxNetworkTests {
    static let commandLine = "console=ttyS0 reboot=k panic=-1"

    /// A file for the guest to download, and its md5 as md5sum prints it.
    static func makeDownload(in directory: String, bytes: Int) throws -> String {
        mkdir(directory, 0o755)
        let path = "\(directory)/blob"
        var generator = SystemRandomNumberGenerator()
        let data = Data((0..<bytes).map { _ in UInt8.random(in: 0...255, using: &generator) })
        try data.write(to: URL(fileURLWithPath: path))
        let sum = try TestNamespace.run("/usr/bin/md5sum", [path])
        return String(sum.prefix(32))
    }

    /// A host-side client in `namespace`, started before the guest boots: it tries `url` every two
    /// seconds (at most `attempts` times) until it gets a body, and writes it to `output`.
    static func startFetcher(_ url: String, in namespace: TestNamespace, output: String, attempts: Int = 400) throws {
        let script = """
            import urllib.request, time
            for _ in range(\(attempts)):
                try:
                    body = urllib.request.urlopen('\(url)', timeout=5).read()
                    if body:
                        open('\(output)', 'wb').write(body)
                        break
                except Exception:
                    pass
                time.sleep(2)
            """
        try namespace.start(["python3", "-c", script])
    }

    /// Runs the `swiftkvm` binary inside `namespace` (so its tap and its passt are there) with
    /// `script` typed into the guest's shell, and returns the console output. The script ends the
    /// guest with `reboot -f`; `--time-limit` bounds it anyway.
    static func runGuest(in namespace: TestNamespace, net: String, script: [String], name: String) throws -> (status: Int32, output: String) {
        let assets = try GuestAssets.testKernel()
        let input = "/tmp/\(namespace.name)-\(name).in"
        let output = "/tmp/\(namespace.name)-\(name).out"
        try (script.joined(separator: "\n") + "\n").write(toFile: input, atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: output, contents: nil)
        defer {
            unlink(input)
            unlink(output)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestNamespace.ipPath ?? "ip")
        process.arguments = [
            "netns", "exec", namespace.name, swiftkvmBinary, "run", "--kernel", assets.kernel, "--initrd", assets.initrd,
            "--cmdline", commandLine, "--net", net, "--time-limit", "1300",
        ]
        process.standardInput = FileHandle(forReadingAtPath: input)
        process.standardOutput = FileHandle(forWritingAtPath: output)
        process.standardError = FileHandle(forWritingAtPath: output)
        try process.run()
        let deadline = Date().addingTimeInterval(1400)
        while process.isRunning, Date() < deadline { usleep(100_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return (process.terminationStatus, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    static var swiftkvmBinary: String {
        var path = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        path.removeLast(3)  // Tests/VMMTests/LinuxNetworkTests.swift
        return path.joined(separator: "/") + "/.build/debug/swiftkvm"
    }

    static let serveFromTheGuest = "mkdir -p /www && echo served-by-the-guest-$((6 * 7)) >/www/index.html && httpd -p PORT -h /www; echo HTTPD-RC-$?"

    @Test(.timeLimit(.minutes(45)))
    func overATapTheGuestPingsDownloadsAndServes() throws {
        let namespace = try TestNamespace(tag: "tap")
        defer { namespace.remove() }
        try namespace.ip("-n", namespace.name, "tuntap", "add", "swk0", "mode", "tap")
        try namespace.ip("-n", namespace.name, "addr", "add", "192.0.2.1/24", "dev", "swk0")
        try namespace.ip("-n", namespace.name, "link", "set", "swk0", "up")
        let directory = "/tmp/\(namespace.name)"
        defer { _ = try? FileManager.default.removeItem(atPath: directory) }
        let md5 = try Self.makeDownload(in: directory, bytes: 2 << 20)
        try namespace.start(["python3", "-m", "http.server", "8080", "--bind", "192.0.2.1", "--directory", directory])
        let fetched = "\(directory)/fetched"
        try Self.startFetcher("http://192.0.2.2:8081/index.html", in: namespace, output: fetched)

        let run = try Self.runGuest(
            in: namespace, net: "tap=swk0,mac=52:54:00:12:34:56",
            script: [
                "cat /sys/class/net/eth0/address; ip link set eth0 up && ip addr add 192.0.2.2/24 dev eth0",
                "ping -c 3 -W 10 192.0.2.1; echo PING-RC-$?",
                "wget -q -O - http://192.0.2.1:8080/blob | md5sum",
                Self.serveFromTheGuest.replacingOccurrences(of: "PORT", with: "8081"),
                "sleep 90", "reboot -f",
            ], name: "tap")
        #expect(run.status == 0, "\(run.output.suffix(2000))")
        #expect(run.output.contains("52:54:00:12:34:56"), "the guest's eth0 has the configured MAC")
        #expect(run.output.contains("PING-RC-0") && run.output.contains("3 packets received"), "ping answered")
        #expect(run.output.contains("\(md5)  -"), "the guest's md5 of the 2 MiB download is \(md5)")
        #expect(run.output.contains("HTTPD-RC-0"))
        let body = (try? String(contentsOfFile: fetched, encoding: .utf8)) ?? ""
        #expect(body.contains("served-by-the-guest-42"), "a host-side client fetched the guest's file: '\(body)'")
        #expect(run.output.contains("the guest rebooted"))
    }

    // It hung in every run until 2026-12-08: Debian's busybox looks for udhcpc's script at
    // /etc/udhcpc/default.script, the initramfs had it under /usr/share, so the lease was never
    // applied (eth0 stayed down, then without an address) and udhcpc spun on "Network is down".
    @Test(.timeLimit(.minutes(45)))
    func userModeGetsDHCPReachesTheHostsLoopbackAndTakesAForwardedPort() throws {
        // passt needs an interface with a default route: a veth to a peer namespace, documentation addresses.
        let namespace = try TestNamespace(tag: "user")
        defer { namespace.remove() }
        let peer = try TestNamespace(tag: "peer")
        defer { peer.remove() }
        try namespace.ip("link", "add", "swk-v0", "netns", namespace.name, "type", "veth", "peer", "name", "swk-v1", "netns", peer.name)
        try namespace.ip("-n", namespace.name, "addr", "add", "198.51.100.2/24", "dev", "swk-v0")
        try namespace.ip("-n", namespace.name, "link", "set", "swk-v0", "up")
        try namespace.ip("-n", peer.name, "addr", "add", "198.51.100.1/24", "dev", "swk-v1")
        try namespace.ip("-n", peer.name, "link", "set", "swk-v1", "up")
        try namespace.ip("-n", namespace.name, "route", "add", "default", "via", "198.51.100.1")
        let directory = "/tmp/\(namespace.name)"
        defer { _ = try? FileManager.default.removeItem(atPath: directory) }
        let md5 = try Self.makeDownload(in: directory, bytes: 1 << 20)
        // A server on the namespace's loopback: passt maps the gateway address to it.
        try namespace.start(["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1", "--directory", directory])
        let fetched = "\(directory)/fetched"
        try Self.startFetcher("http://127.0.0.1:2222/index.html", in: namespace, output: fetched)

        let run = try Self.runGuest(
            in: namespace, net: "user,hostfwd=tcp:127.0.0.1:2222-:7000",
            script: [
                "udhcpc -i eth0 -n -q -t 5; echo DHCP-RC-$?",
                "wget -q -O - http://198.51.100.1:8080/blob | md5sum",
                Self.serveFromTheGuest.replacingOccurrences(of: "PORT", with: "7000"),
                "sleep 90", "reboot -f",
            ], name: "user")
        #expect(run.status == 0, "\(run.output.suffix(2000))")
        #expect(run.output.contains("SWIFTKVM-DHCP ip=198.51.100.2 mask=24 router=198.51.100.1"), "passt's lease")
        #expect(run.output.contains("DHCP-RC-0"))
        #expect(run.output.contains("\(md5)  -"), "the download through passt's gateway has md5 \(md5)")
        #expect(run.output.contains("HTTPD-RC-0"))
        let body = (try? String(contentsOfFile: fetched, encoding: .utf8)) ?? ""
        #expect(body.contains("served-by-the-guest-42"), "the forwarded port reached the guest's server: '\(body)'")
    }
}

/// The networked test kernel: the cache's, if it was built with virtio-net (Firmware/linux/test-kernel.config).
enum NetworkGuestAssets {
    static var kernelHasNetworking: Bool {
        guard let bytes = try? readHostFile("\(GuestAssets.cache)/test-kernel/config") else { return false }
        return String(decoding: bytes, as: UTF8.self).contains("\nCONFIG_VIRTIO_NET=y")
    }

    /// In CI the kernel must have networking and namespaces must work (`make test` builds it, as root).
    static var shouldRun: Bool {
        KVMAvailability.isCI || (GuestAssets.shouldRun && GuestAssets.present && kernelHasNetworking && TestNamespace.isAvailable)
    }
    static let skipReason: Comment =
        "needs the test kernel with virtio-net in the cache (make guest), /dev/kvm, root and ip(8); CI is unset"
}
