import Foundation
import Testing

@testable import ControlAPI
import ControlAPIMock

#if canImport(Glibc)
import Glibc
#endif

/// A folder of its own for each test (Swift Testing runs tests in parallel: a pid is not unique).
func makeTemporaryFolder(_ label: String) throws -> String {
    let path = NSTemporaryDirectory() + "swiftkvm-api-\(label)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A server with a mock controller on a fresh socket; stopped and its folder removed by `finish()`.
final class TestServer {
    let folder: String
    let path: String
    let controller: MockVMController
    let server: ControlServer

    init(_ label: String, options: ControlServer.Options = ControlServer.Options(idleTimeout: 10), socketPath: String? = nil) throws {
        folder = try makeTemporaryFolder(label)
        path = socketPath ?? "\(folder)/api.sock"
        controller = MockVMController()
        server = ControlServer(path: path, controller: controller, options: options)
        try server.start()
    }

    func finish() {
        server.stop()
        try? FileManager.default.removeItem(atPath: folder)
    }

    func connection() throws -> TestConnection { try TestConnection(path: path) }

    /// One request on a connection of its own.
    func request(_ method: String, _ target: String, _ body: String? = nil) throws -> TestResponse {
        let connection = try connection()
        defer { connection.close() }
        try connection.send(TestConnection.request(method, target, body))
        return try connection.readResponse()
    }
}

struct TestResponse {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]

    var text: String { String(decoding: body, as: UTF8.self) }
    var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] }
    var fault: String? { json?["fault_message"] as? String }
}

struct ClientError: Error, CustomStringConvertible {
    var description: String
}

/// A blocking client socket with a receive timeout, so no test waits forever.
final class TestConnection {
    let fd: Int32
    private var buffered: [UInt8] = []

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError(description: "socket: errno \(errno)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let target = try UnixSocketPath(path)
        guard var address = target.address() else { throw ClientError(description: "no address for \(path)") }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            Glibc.close(fd)
            throw ClientError(description: "connect \(path): errno \(errno)")
        }
    }

    static func request(_ method: String, _ target: String, _ body: String? = nil, close: Bool = false) -> [UInt8] {
        var text = "\(method) \(target) HTTP/1.1\r\nHost: localhost\r\n"
        if close { text += "Connection: close\r\n" }
        if let body { text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
        text += "\r\n" + (body ?? "")
        return Array(text.utf8)
    }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw ClientError(description: "send: errno \(errno)") }
            offset += sent
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads more bytes; false at the end of the stream.
    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count < 0 { throw ClientError(description: "recv: errno \(errno) (timed out?)") }
        buffered += chunk[0..<count]
        return count > 0
    }

    /// Whether the server closed the connection (the next read is the end of the stream).
    func isClosedByServer() throws -> Bool {
        if !buffered.isEmpty { return false }
        return try !fill()
    }

    func readResponse() throws -> TestResponse {
        let separator: [UInt8] = [13, 10, 13, 10]
        var headEnd: Int?
        while headEnd == nil {
            if buffered.count >= 4 {
                headEnd = (0...(buffered.count - 4)).first { Array(buffered[$0..<($0 + 4)]) == separator }
            }
            if headEnd == nil, try !fill() { throw ClientError(description: "the server closed before a whole response") }
        }
        let end = headEnd! + 4
        let lines = String(decoding: buffered[0..<headEnd!], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, statusParts[0] == "HTTP/1.1", let status = Int(statusParts[1]) else {
            throw ClientError(description: "bad status line \(lines[0])")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            headers[parts[0].lowercased()] = parts.count > 1 ? parts[1].trimmingCharacters(in: .whitespaces) : ""
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        while buffered.count < end + length {
            if try !fill() { throw ClientError(description: "the server closed inside a body") }
        }
        let body = Array(buffered[end..<(end + length)])
        buffered.removeSubrange(0..<(end + length))
        return TestResponse(status: status, headers: headers, body: body)
    }

    func close() { Glibc.close(fd) }
}
