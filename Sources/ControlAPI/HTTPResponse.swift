import FoundationEssentials

/// A response as the server writes it: a status, a few header fields and a JSON body (or none).
public struct HTTPResponse: Sendable, Equatable {
    public var status: HTTPStatus
    /// Extra fields (`Allow` on a 405); Content-Type, Content-Length and Connection are added when written.
    public var headers: [String: String]
    public var body: [UInt8]

    public init(status: HTTPStatus, headers: [String: String] = [:], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// 204, as Firecracker answers a successful PUT or PATCH.
    public static let noContent = HTTPResponse(status: .noContent)

    /// A JSON body (keys sorted, so answers are stable for tests and diffs).
    public static func json<Value: Encodable>(_ value: Value, status: HTTPStatus = .ok) -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return HTTPResponse(status: status, body: Array(try encoder.encode(value)))
        } catch {
            return .fault(.internalServerError, "could not encode the response: \(error)")
        }
    }

    /// Firecracker's error body: `{"fault_message": "..."}`.
    public static func fault(_ status: HTTPStatus, _ message: String, headers: [String: String] = [:]) -> HTTPResponse {
        var response = json(Fault(faultMessage: message), status: status)
        response.headers = headers
        return response
    }

    /// The bytes on the wire (RFC 9112 §4, §6). A 204 has neither a body nor Content-Length (RFC 9110 §8.6).
    public func serialized(keepAlive: Bool) -> [UInt8] {
        var head = "HTTP/1.1 \(status.code) \(status.reason)\r\nServer: swiftkvm\r\n"
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
        if status != .noContent {
            if !body.isEmpty { head += "Content-Type: application/json\r\n" }
            head += "Content-Length: \(body.count)\r\n"
        }
        if !keepAlive { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (status == .noContent ? [] : body)
    }
}

/// The error body of every 4xx and 5xx answer.
public struct Fault: Codable, Sendable, Equatable {
    public var faultMessage: String

    public init(faultMessage: String) { self.faultMessage = faultMessage }

    enum CodingKeys: String, CodingKey { case faultMessage = "fault_message" }
}
