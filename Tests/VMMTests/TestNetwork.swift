import CNet
import Foundation
import Glibc
import Testing
@testable import VMM

/// A network namespace a test makes and removes: the only hosts network tests talk to. Addresses
/// come from the documentation ranges (192.0.2.0/24, 198.51.100.0/24); nothing here touches the
/// machine's own interfaces.
final class TestNamespace: @unchecked Sendable {
    let name: String
    private var children: [Process] = []

    /// Creating namespaces, taps and veth pairs needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and `ip`.
    static var isAvailable: Bool { geteuid() == 0 && ipPath != nil && access("/dev/net/tun", R_OK | W_OK) == 0 }
    static let skipReason: Comment = "network namespace tests need root, ip(8) and /dev/net/tun"
    static let ipPath: String? = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first { (path: String) in access(path, X_OK) == 0 }

    /// `swk-TAG-…`, unique per test and process.
    init(tag: String) throws {
        name = "swk-\(tag)-\(getpid())-\(UInt32.random(in: 0..<1_000_000))"
        try ip("netns", "add", name)
        try ip("-n", name, "link", "set", "lo", "up")
    }

    /// Ends what was started in the namespace and removes it (its taps and veths go with it).
    func remove() {
        for child in children where child.isRunning {
            kill(child.processIdentifier, SIGTERM)
            for _ in 0..<200 where child.isRunning { usleep(10_000) }
            if child.isRunning { kill(child.processIdentifier, SIGKILL) }
        }
        children.removeAll()
        _ = try? Self.run(Self.ipPath ?? "ip", ["netns", "del", name])
    }

    /// Runs `ip ARGS…` (with `-n NAME` where the caller puts it), failing the test on a non-zero status.
    @discardableResult
    func ip(_ arguments: String...) throws -> String {
        try Self.run(Self.ipPath ?? "ip", arguments)
    }

    /// Runs `COMMAND…` inside the namespace and returns its standard output; throws on failure.
    @discardableResult
    func exec(_ arguments: [String], timeout: Double = 30) throws -> String {
        try Self.run(Self.ipPath ?? "ip", ["netns", "exec", name] + arguments, timeout: timeout)
    }

    /// Starts `COMMAND…` inside the namespace in the background; `remove()` ends it.
    func start(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.ipPath ?? "ip")
        process.arguments = ["netns", "exec", name] + arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        children.append(process)
    }

    /// Runs `body` on a thread of its own that has entered the namespace (setns(2) changes only the
    /// calling thread): descriptors it opens (a tap) and processes it starts (passt) belong there.
    func enter<T>(_ body: @escaping () throws -> T) throws -> T {
        let fd = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMMError.system(call: "open /run/netns/\(name)", errno: errno) }
        defer { close(fd) }
        nonisolated(unsafe) var result: Result<T, any Error> = .failure(VMMError.configuration("the namespace thread did not run"))
        let thread = try OSThread(name: "netns") {
            guard cnet_setns(fd, CNET_CLONE_NEWNET) == 0 else {
                result = .failure(VMMError.system(call: "setns", errno: errno))
                return
            }
            result = Result { try body() }
        }
        thread.join()
        return try result.get()
    }

    /// Runs a program to completion (bounded by `timeout` seconds), returning its standard output.
    /// Output goes through files, not pipes: a pipe's end inherited by a long-lived child started at
    /// the same moment by another test would keep it from ever reaching end-of-file.
    @discardableResult
    static func run(_ path: String, _ arguments: [String], timeout: Double = 30) throws -> String {
        let base = "/tmp/swk-run-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
        FileManager.default.createFile(atPath: base + ".out", contents: nil)
        FileManager.default.createFile(atPath: base + ".err", contents: nil)
        defer {
            unlink(base + ".out")
            unlink(base + ".err")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle(forWritingAtPath: base + ".out")
        process.standardError = FileHandle(forWritingAtPath: base + ".err")
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            for _ in 0..<100 where process.isRunning { usleep(10_000) }
            throw VMMError.configuration("\(path) \(arguments.joined(separator: " ")) ran past \(timeout) s")
        }
        let text = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
        guard process.terminationStatus == 0 else {
            let problem = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
            throw VMMError.configuration("\(path) \(arguments.joined(separator: " ")) failed (\(process.terminationStatus)): \(problem)")
        }
        return text
    }
}
