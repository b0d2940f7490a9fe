import Glibc
import VMConfig
import Virtio

/// A guest NIC's host side, opened before the machine is built so that a missing tap, a tap in
/// use, a missing passt or a taken port is reported before boot: the backend, and passt for
/// user-mode networking.
final class NetworkAttachment: @unchecked Sendable {
    // @unchecked: immutable after init; the backend and passt have their own rules.
    let backend: any PollableNetworkBackend
    let passt: PasstProcess?
    let macAddress: [UInt8]
    let label: String

    /// Locally administered, unicast: 02:53:4b:56:4d ("SKVM") then the interface's index.
    static func defaultMAC(index: Int) -> [UInt8] { [0x02, 0x53, 0x4B, 0x56, 0x4D, UInt8(truncatingIfNeeded: index)] }

    init(_ interface: NetworkInterfaceConfig, index: Int) throws(VMMError) {
        label = interface.id ?? "eth\(index)"
        if let text = interface.mac {
            guard let mac = MACAddress(text), mac.isUnicast else {
                throw .configuration("network interface \(label): '\(text)' is not a unicast MAC address like 52:54:00:12:34:56")
            }
            macAddress = mac.bytes
        } else {
            macAddress = Self.defaultMAC(index: index)
        }
        switch interface.backend {
        case .tap(let name):
            backend = try TapBackend(name: name)
            passt = nil
        case .user(let forwards):
            let process = try PasstProcess(forwards: forwards, interfaceName: label)
            backend = process.backend
            passt = process
        }
    }

    /// Ends passt (if any) and closes the backend.
    func close() {
        passt?.stop()
        backend.close()
    }

    /// The device and its worker, at `location` in `machine`.
    func makeRunner(at location: VirtioMMIODeviceDescription, index: Int, in machine: Machine) throws(VMMError) -> (VirtioNet, VirtioDeviceRunner) {
        let device = VirtioNet(backend: backend, macAddress: macAddress)
        let input = VirtioDeviceInput(queue: VirtioNet.receiveQueue) { [device, backend] in
            guard device.wantsBackendInput else { return (nil, false) }
            return (backend.readableDescriptor, backend.hasBufferedFrame)
        }
        let runner = try VirtioDeviceRunner(device: device, name: "virtio-net\(index)", at: location, in: machine, inputs: [input])
        return (device, runner)
    }
}

extension NetworkInterfaceConfig {
    /// Parses the text after `--net`: `tap=NAME[,mac=MAC]` or
    /// `user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...[,mac=MAC]` (QEMU's spelling). Errors
    /// name the part that is wrong.
    public init(argument: String) throws(VMMError) {
        var parts = argument.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let kind = parts.removeFirst()
        var mac: String?
        var forwards: [PortForward] = []
        var id: String?
        for option in parts {
            let (key, value) = option.firstIndex(of: "=").map { (String(option[..<$0]), String(option[option.index(after: $0)...])) } ?? (option, "")
            switch key {
            case "mac": mac = value
            case "id": id = value
            case "hostfwd" where kind == "user": forwards.append(try Self.parseForward(value))
            default:
                throw .configuration(
                    kind == "user"
                        ? "unknown option '\(option)' for user networking (it takes hostfwd=tcp:[ADDR]:PORT-:PORT and mac=MAC)"
                        : "unknown option '\(option)' for a tap (it takes mac=MAC)")
            }
        }
        if kind == "user" {
            self.init(id: id, backend: .user(forwards: forwards), mac: mac)
        } else if kind.hasPrefix("tap=") {
            let name = String(kind.dropFirst(4))
            guard !name.isEmpty else { throw .configuration("tap= needs a name: tap=NAME") }
            self.init(id: id, backend: .tap(name: name), mac: mac)
        } else {
            throw .configuration("'\(kind)' is not a network backend: use tap=NAME or user")
        }
    }

    /// `tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT` (the guest address QEMU allows before the last colon is
    /// not supported: passt forwards to the address it gave the guest).
    static func parseForward(_ text: String) throws(VMMError) -> PortForward {
        let wrong = VMMError.configuration("hostfwd=\(text) is not tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT (for example tcp::2222-:22)")
        guard text.hasPrefix("tcp:") else {
            throw text.hasPrefix("udp:") ? .configuration("hostfwd=\(text): only tcp forwards are supported") : wrong
        }
        let rest = text.dropFirst(4)
        let halves = rest.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard halves.count == 2 else { throw wrong }
        let host = halves[0].split(separator: ":", omittingEmptySubsequences: false)
        let guest = halves[1].split(separator: ":", omittingEmptySubsequences: false)
        guard host.count == 2, guest.count == 2, guest[0].isEmpty, let hostPort = Int(host[1]), let guestPort = Int(guest[1]),
            (1...65535).contains(hostPort), (1...65535).contains(guestPort)
        else { throw wrong }
        return PortForward(hostAddress: host[0].isEmpty ? nil : String(host[0]), hostPort: hostPort, guestPort: guestPort)
    }
}
