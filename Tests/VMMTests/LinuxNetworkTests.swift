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
    static let commandLine = "console=ttyS0 reboot=k panic=-1 quiet"

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

    /// Fetches `url` from inside `namespace` with Python's urllib, retrying for a while (the guest's
    /// server may still be starting). Returns the body, or nil.
    static func fetch(_ url: String, in namespace: TestNamespace, attempts: Int = 10) -> String? {
        let script = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('\(url)', timeout=30).read().decode())"
        for _ in 0..<attempts {
            if let body = try? namespace.exec(["python3", "-c", script], timeout: 60), !body.isEmpty { return body }
            sleep(3)
        }
        return nil
    }

    /// Serves /www/index.html from the guest with busybox httpd on `port`.
    static func startGuestServer(_ session: LinuxSession, port: Int) throws {
        session.send("mkdir -p /www && echo served-by-the-guest-$((6 * 7)) >/www/index.html && httpd -p \(port) -h /www; echo HTTPD-RC-$? HTTPD-$((6 * 7))")
        let started = try session.waitFor("HTTPD-42", timeout: .seconds(300))
        #expect(started.contains("HTTPD-RC-0"), "busybox httpd started: \(started)")
    }

    @Test(.timeLimit(.minutes(25)))
    func overATapTheGuestPingsDownloadsAndServes() throws {
        let assets = try GuestAssets.testKernel()
        let namespace = try TestNamespace(tag: "tap")
        defer { namespace.remove() }
        try namespace.ip("-n", namespace.name, "tuntap", "add", "swk0", "mode", "tap")
        try namespace.ip("-n", namespace.name, "addr", "add", "192.0.2.1/24", "dev", "swk0")
        try namespace.ip("-n", namespace.name, "link", "set", "swk0", "up")
        let directory = "/tmp/\(namespace.name)"
        defer { _ = try? FileManager.default.removeItem(atPath: directory) }
        let md5 = try Self.makeDownload(in: directory, bytes: 2 << 20)
        try namespace.start(["python3", "-m", "http.server", "8080", "--bind", "192.0.2.1", "--directory", directory])

        var configuration = LinuxGuestConfiguration(
            kernelPath: assets.kernel, initrdPath: assets.initrd, commandLine: Self.commandLine, memorySize: 256 << 20,
            timeLimit: .seconds(1400))
        configuration.networkInterfaces = [NetworkInterfaceConfig(backend: .tap(name: "swk0"), mac: "52:54:00:12:34:56")]
        let session = try namespace.enter { try LinuxSession(configuration) }
        defer { session.stop() }
        try session.waitFor("SWIFTKVM-INIT-READY", timeout: .seconds(900))
        try session.waitFor("# ", timeout: .seconds(300))

        session.send("cat /sys/class/net/eth0/address; ip link set eth0 up && ip addr add 192.0.2.2/24 dev eth0; echo UP-$((6 * 7))")
        let up = try session.waitFor("UP-42", timeout: .seconds(300))
        #expect(up.contains("52:54:00:12:34:56"), "the guest's eth0 has the configured MAC: \(up)")

        session.send("ping -c 3 -W 10 192.0.2.1; echo PING-RC-$? PING-$((6 * 7))")
        let ping = try session.waitFor("PING-42", timeout: .seconds(300))
        #expect(ping.contains("PING-RC-0"), "ping answered: \(ping)")
        #expect(ping.contains("3 packets received"), "\(ping)")

        let started = ContinuousClock.now
        session.send("wget -q -O - http://192.0.2.1:8080/blob | md5sum; echo WGET-$((6 * 7))")
        let download = try session.waitFor("WGET-42", timeout: .seconds(600))
        #expect(download.contains(md5), "the guest's md5 of the 2 MiB download is \(md5): \(download)")
        print("tap: 2 MiB downloaded into the guest in \(ContinuousClock.now - started)")

        try Self.startGuestServer(session, port: 8081)
        let body = Self.fetch("http://192.0.2.2:8081/index.html", in: namespace)
        #expect(body?.contains("served-by-the-guest-42") == true, "a host-side client fetched the guest's file: \(body ?? "nothing")")

        let device = try #require(session.guest.networkDevices.first)
        #expect(device.statistics.framesReceived > 1000 && device.statistics.framesSent > 100)
        #expect(device.negotiatedFeatures & VirtioNet.Feature.guestTSO4 != 0, "Linux accepted the tap's offloads")
        session.send("reboot -f")
        let report = try session.waitForEnd(timeout: .seconds(300))
        #expect(report.outcome == .rebooted)
    }

    @Test(.timeLimit(.minutes(25)))
    func userModeGetsDHCPReachesTheHostsLoopbackAndTakesAForwardedPort() throws {
        let assets = try GuestAssets.testKernel()
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

        var configuration = LinuxGuestConfiguration(
            kernelPath: assets.kernel, initrdPath: assets.initrd, commandLine: Self.commandLine, memorySize: 256 << 20,
            timeLimit: .seconds(1400))
        configuration.networkInterfaces = [
            NetworkInterfaceConfig(backend: .user(forwards: [PortForward(hostAddress: "127.0.0.1", hostPort: 2222, guestPort: 7000)]))
        ]
        let session = try namespace.enter { try LinuxSession(configuration) }
        defer { session.stop() }
        try session.waitFor("SWIFTKVM-INIT-READY", timeout: .seconds(900))
        try session.waitFor("# ", timeout: .seconds(300))

        session.send("udhcpc -i eth0 -n -q -t 5; echo DHCP-RC-$? DHCP-$((6 * 7))")
        let dhcp = try session.waitFor("DHCP-42", timeout: .seconds(300))
        #expect(dhcp.contains("SWIFTKVM-DHCP ip=198.51.100.2 mask=24 router=198.51.100.1"), "passt's lease: \(dhcp)")
        #expect(dhcp.contains("DHCP-RC-0"))

        session.send("wget -q -O - http://198.51.100.1:8080/blob | md5sum; echo WGET-$((6 * 7))")
        let download = try session.waitFor("WGET-42", timeout: .seconds(600))
        #expect(download.contains(md5), "the download through passt's gateway has md5 \(md5): \(download)")

        try Self.startGuestServer(session, port: 7000)
        let body = Self.fetch("http://127.0.0.1:2222/index.html", in: namespace)
        #expect(body?.contains("served-by-the-guest-42") == true, "the forwarded port reached the guest's server: \(body ?? "nothing")")

        session.send("reboot -f")
        let report = try session.waitForEnd(timeout: .seconds(300))
        #expect(report.outcome == .rebooted)
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
