import Glibc
import Testing
import TestSupport
import VMConfig
import VMMCore
@testable import VMM
@testable import Virtio

/// A virtio-net device on a transport with a mock driver for each queue, over a real backend.
struct NetworkDeviceFixture {
    let device: VirtioNet
    let transport: VirtioMMIOTransport
    var rx: MockDriver
    var tx: MockDriver

    init(backend: any NetworkBackend, mac: [UInt8] = [0x02, 0x53, 0x4B, 0x56, 0x4D, 0x01]) {
        device = VirtioNet(backend: backend, macAddress: mac)
        transport = VirtioMMIOTransport(device: device, memory: MockDriver.makeMemory(size: 4 << 20), interrupt: CountingTrigger())
        rx = MockDriver(transport: transport, queueSize: 16, queueIndex: 0, areas: 0, arena: 0x10000)
        tx = MockDriver(transport: transport, queueSize: 16, queueIndex: 1, areas: 0x8000, arena: 0x200000)
        #expect(rx.initialize(alsoSetUp: [tx]))
    }

    mutating func send(_ frame: [UInt8]) {
        let bytes = [UInt8](repeating: 0, count: VirtioNet.headerLength) + frame
        tx.makeAvailable(tx.addChain([(tx.allocate(bytes.count, bytes: bytes), UInt32(bytes.count), false)]))
        tx.notify()
    }

    /// Offers `count` receive buffers of 2 KiB (no notify: the test serves queue 0 itself).
    mutating func offerReceive(_ count: Int) -> [UInt64] {
        (0..<count).map { _ in
            let address = rx.allocate(2048)
            rx.makeAvailable(rx.addChain([(address, 2048, true)]))
            return address
        }
    }

    /// The frames delivered into receive buffers since used index `from` (header removed).
    func received(since from: UInt16, addresses: [UInt64], offered: UInt16) -> [[UInt8]] {
        (from..<rx.usedIndex).map { position in
            let element = rx.usedElement(position)
            let address = addresses[Int(position - offered)]
            return Array(rx.bytes(address, Int(element.length)).dropFirst(VirtioNet.headerLength))
        }
    }
}

/// Waits (bounded) until `descriptor` is readable.
func waitReadable(_ descriptor: Int32, milliseconds: Int32) -> Bool {
    var waiting = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
    return poll(&waiting, 1, milliseconds) > 0
}

func readExactly(_ descriptor: Int32, _ count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var done = 0
    for _ in 0..<1000 where done < count {
        guard waitReadable(descriptor, milliseconds: 2000) else { break }
        let got = bytes.withUnsafeMutableBytes { read(descriptor, $0.baseAddress! + done, count - done) }
        if got <= 0 { break }
        done += got
    }
    return Array(bytes.prefix(done))
}

func writeAll(_ descriptor: Int32, _ bytes: [UInt8]) {
    var done = 0
    while done < bytes.count {
        let wrote = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + done, bytes.count - done) }
        guard wrote > 0 else { return }
        done += wrote
    }
}

func lengthPrefixed(_ frame: [UInt8]) -> [UInt8] {
    let length = UInt32(frame.count)
    return [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: length >> $0) } + frame
}

func testFrame(_ count: Int, seed: UInt32) -> [UInt8] {
    [0x02, 0x53, 0x4B, 0x56, 0x4D, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x09, 0x08, 0x00] + pattern(count - 14, seed: seed)
}

/// The stream backend passt uses, with the test as passt on the other end of a socket pair.
@Suite struct StreamBackendTests {
    func makePair() -> (StreamBackend, Int32) {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        return (StreamBackend(descriptor: pair[0], peerName: "test peer"), pair[1])
    }

    @Test func framesCrossBothWaysWithTheirLengthAndWithoutTheHeader() {
        let (backend, peer) = makePair()
        defer { close(peer) }
        var fixture = NetworkDeviceFixture(backend: backend)
        #expect(fixture.device.features & VirtioNet.Feature.offloads == 0)

        // Guest to peer: a 4-byte big-endian length, then the frame without the virtio-net header.
        let outgoing = testFrame(1514, seed: 1)
        fixture.send(outgoing)
        #expect(readExactly(peer, 4 + outgoing.count) == lengthPrefixed(outgoing))

        // Peer to guest: three frames, written in awkward pieces (a length cut in two, frames run together).
        let incoming = [testFrame(60, seed: 2), testFrame(1514, seed: 3), testFrame(342, seed: 4)]
        let stream = incoming.flatMap(lengthPrefixed)
        let addresses = fixture.offerReceive(4)
        for cut in [2, 700, 1600, stream.count] {
            let start = [0, 2, 700, 1600][[2, 700, 1600, stream.count].firstIndex(of: cut)!]
            writeAll(peer, Array(stream[start..<cut]))
            fixture.transport.serve(queue: 0)
        }
        #expect(fixture.received(since: 0, addresses: addresses, offered: 0) == incoming)
        #expect(fixture.device.statistics.framesReceived == 3)
        #expect(backend.readableDescriptor != nil)
    }

    @Test func aLengthAbove64KiBEndsTheStreamAndTheDeviceGoesOn() {
        let (backend, peer) = makePair()
        defer { close(peer) }
        var fixture = NetworkDeviceFixture(backend: backend)
        _ = fixture.offerReceive(2)
        writeAll(peer, [0x00, 0x10, 0x00, 0x00] + pattern(100))  // 1 MiB announced
        fixture.transport.serve(queue: 0)
        #expect(backend.readableDescriptor == nil)
        #expect(fixture.rx.usedIndex == 0)
        #expect(fixture.device.statistics.receiveDropped == 1)
        // Sending to a closed stream fails that frame only; the queue stays usable.
        fixture.send(testFrame(60, seed: 5))
        #expect(fixture.device.statistics.transmitErrors == 1)
        #expect(fixture.transport.isLive)
    }

    @Test func thePeerClosingEndsReceiveWithoutASpin() {
        let (backend, peer) = makePair()
        var fixture = NetworkDeviceFixture(backend: backend)
        _ = fixture.offerReceive(2)
        close(peer)
        fixture.transport.serve(queue: 0)
        #expect(backend.readableDescriptor == nil, "a closed stream is no longer polled")
        #expect(!backend.hasBufferedFrame)
    }
}

@Suite struct NetworkArgumentTests {
    @Test func tapAndUserArgumentsParse() throws {
        #expect(try NetworkInterfaceConfig(argument: "tap=tap0") == NetworkInterfaceConfig(backend: .tap(name: "tap0")))
        #expect(
            try NetworkInterfaceConfig(argument: "tap=tap1,mac=52:54:00:12:34:56")
                == NetworkInterfaceConfig(backend: .tap(name: "tap1"), mac: "52:54:00:12:34:56"))
        #expect(try NetworkInterfaceConfig(argument: "user") == NetworkInterfaceConfig(backend: .user(forwards: [])))
        #expect(
            try NetworkInterfaceConfig(argument: "user,hostfwd=tcp::2222-:22,hostfwd=tcp:127.0.0.1:8080-:80")
                == NetworkInterfaceConfig(
                    backend: .user(forwards: [
                        PortForward(hostPort: 2222, guestPort: 22), PortForward(hostAddress: "127.0.0.1", hostPort: 8080, guestPort: 80),
                    ])))
    }

    @Test func badArgumentsSayWhatIsWrong() {
        let cases: [(String, String)] = [
            ("tap=", "needs a name"),
            ("bridge", "is not a network backend"),
            ("tap=t0,hostfwd=tcp::1-:2", "unknown option"),
            ("user,hostfwd=udp::53-:53", "only tcp"),
            ("user,hostfwd=tcp::0-:22", "is not tcp:"),
            ("user,hostfwd=tcp::2222:22", "is not tcp:"),
            ("user,hostfwd=tcp::70000-:22", "is not tcp:"),
            ("user,speed=10", "unknown option"),
        ]
        for (argument, problem) in cases {
            #expect {
                try NetworkInterfaceConfig(argument: argument)
            } throws: { error in
                "\(error)".contains(problem) && !"\(error)".contains("--net")
            }
        }
    }

    @Test func aTakenPortIsReportedBeforePasstStarts() throws {
        // Bind a loopback port of our own, then ask for it.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                #expect(bind(fd, pointer, length) == 0)
                #expect(listen(fd, 1) == 0)
                #expect(getsockname(fd, pointer, &length) == 0)
            }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        #expect {
            try PasstProcess.checkFree(PortForward(hostAddress: "127.0.0.1", hostPort: port, guestPort: 22))
        } throws: { error in
            "\(error)" == "host port 127.0.0.1:\(port) is already in use: pick another port to forward"
        }
        #expect(throws: VMMError.self) { try PasstProcess.checkFree(PortForward(hostAddress: "not-an-ip", hostPort: 1, guestPort: 22)) }
    }
}

/// A tap inside a namespace the test makes: the host kernel on the other side.
@Suite(.enabled(if: TestNamespace.isAvailable, TestNamespace.skipReason))
struct TapBackendTests {
    static let guestMAC: [UInt8] = [0x02, 0x53, 0x4B, 0x56, 0x4D, 0x07]

    /// An ARP request from 192.0.2.2 (the "guest") for 192.0.2.1 (the tap's address in the namespace).
    static var arpRequest: [UInt8] {
        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + guestMAC + [0x08, 0x06]
            + [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01] + guestMAC + [192, 0, 2, 2] + [0, 0, 0, 0, 0, 0] + [192, 0, 2, 1]
    }

    @Test(.timeLimit(.minutes(45)))
    func anARPRequestOnTheTransmitQueueBringsTheKernelsReplyBackThroughReceive() throws {
        let namespace = try TestNamespace(tag: "arp")
        defer { namespace.remove() }
        try namespace.ip("-n", namespace.name, "tuntap", "add", "swk0", "mode", "tap")
        try namespace.ip("-n", namespace.name, "addr", "add", "192.0.2.1/24", "dev", "swk0")
        try namespace.ip("-n", namespace.name, "link", "set", "swk0", "up")
        let backend = try namespace.enter { try TapBackend(name: "swk0") }
        defer { backend.close() }
        #expect(!backend.created, "the tap made with ip tuntap is attached, not created")

        var fixture = NetworkDeviceFixture(backend: backend, mac: Self.guestMAC)
        #expect(fixture.device.features & VirtioNet.Feature.offloads == VirtioNet.Feature.offloads)
        #expect(backend.receiveOffloads == [.checksum, .tcp4Segmentation, .tcp6Segmentation], "TUNSETOFFLOAD followed the driver")
        let addresses = fixture.offerReceive(16)
        fixture.send(Self.arpRequest)
        #expect(fixture.device.statistics.framesSent == 1)

        // The namespace's kernel answers (it may also send its own frames first: IPv6 and the like).
        // Bounded: 100 looks of at most 200 ms. The queue is served on every look (readiness only
        // paces it), so nothing read in one look waits for the descriptor to be readable again.
        var reply: [UInt8]?
        var seen = 0
        var kinds: [String] = []
        for _ in 0..<100 where reply == nil {
            if let fd = backend.readableDescriptor { _ = waitReadable(fd, milliseconds: 200) }
            fixture.transport.serve(queue: 0)
            for frame in fixture.received(since: UInt16(seen), addresses: addresses, offered: 0) {
                kinds.append(frame.count >= 14 ? String(format: "%02x%02x/%d", frame[12], frame[13], frame.count) : "short/\(frame.count)")
                if frame.count >= 42, frame[12] == 0x08, frame[13] == 0x06, frame[20] == 0, frame[21] == 2 { reply = frame }
            }
            seen = Int(fixture.rx.usedIndex)
            if seen >= 16 { break }
        }
        let arp = try #require(
            reply, "no ARP reply came back through the receive queue; frames received (ethertype/length): \(kinds)")
        #expect(Array(arp[0..<6]) == Self.guestMAC, "addressed to the guest")
        #expect(Array(arp[28..<32]) == [192, 0, 2, 1], "from 192.0.2.1")
        #expect(Array(arp[38..<42]) == [192, 0, 2, 2], "to 192.0.2.2")
        #expect(fixture.device.statistics.framesReceived >= 1)
    }

    @Test func whatIsNotAUsableTapIsReportedInOneLine() throws {
        let namespace = try TestNamespace(tag: "taperr")
        defer { namespace.remove() }
        try namespace.ip("-n", namespace.name, "tuntap", "add", "swk1", "mode", "tap")
        // lo is no tap; a tap already attached is busy; a name too long is refused before any syscall.
        #expect {
            try namespace.enter { try TapBackend(name: "lo") }
        } throws: { "\($0)" == "lo exists and is not a tap device (or not one made for IFF_VNET_HDR)" }
        let first = try namespace.enter { try TapBackend(name: "swk1") }
        defer { first.close() }
        #expect {
            try namespace.enter { try TapBackend(name: "swk1") }
        } throws: { "\($0)" == "tap swk1 is in use by another process" }
        #expect(throws: VMMError.self) { try TapBackend(name: "a-name-longer-than-15") }
        // A name that does not exist is created (we are root here) and goes away when closed.
        let made = try namespace.enter { try TapBackend(name: "swk-new") }
        #expect(made.created)
        #expect(try namespace.ip("-n", namespace.name, "link", "show").contains("swk-new"))
        made.close()
        #expect(try !namespace.ip("-n", namespace.name, "link", "show").contains("swk-new"))
    }
}
