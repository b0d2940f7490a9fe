/// An incremental HTTP/1.1 request parser (RFC 9112): bytes go in as they arrive, whole requests
/// come out. It is pure — no sockets, no clock — so tests and a fuzzer drive it with byte arrays.
///
/// What it takes: a request line `METHOD SP origin-form SP HTTP/1.x`, header fields (names are
/// case-insensitive), an optional `Content-Length` body, keep-alive (HTTP/1.1's default; HTTP/1.0
/// keeps the connection only with `Connection: keep-alive`; `Connection: close` ends it), bare LF
/// line ends (RFC 9112 §2.2 allows a recipient to accept them) and empty lines before a request
/// (§2.2). What it refuses, each with the status to answer and a sentence saying why:
///
/// | input | status |
/// | --- | --- |
/// | request line plus header section over `HTTPLimits.maximumHeaderBytes` (or too many fields) | 431 |
/// | `Content-Length` over `HTTPLimits.maximumBodyBytes` | 413 |
/// | any `Transfer-Encoding` (chunked bodies are not supported) | 501 |
/// | a method that is not an HTTP method (RFC 9110 §9) | 405 |
/// | a version other than HTTP/1.0 or HTTP/1.1 | 505 |
/// | anything malformed: a bad request line or field, a second differing `Content-Length`, whitespace before a colon (§5.1), obs-fold (§5.2) | 400 |
///
/// After an error the parser stays failed: the byte stream has lost its framing, so the server
/// answers and closes the connection.
public struct HTTPRequestParser: Sendable {
    public let limits: HTTPLimits
    private var buffer: [UInt8] = []
    /// Where unparsed bytes start in `buffer` (consumed bytes are dropped lazily).
    private var start = 0
    private var failure: HTTPParseError?
    /// The head of a request whose body has not all arrived.
    private var pendingHead: Head?

    private struct Head: Sendable {
        var request: HTTPRequest
        var bodyLength: Int
    }

    /// Set when a request's head asked `Expect: 100-continue` and its body has not all arrived.
    private var continueRequested = false

    /// Whether the client waits for `100 Continue` before it sends the body (RFC 9110 §10.1.1; curl
    /// does so for bodies over 1 KiB): true once per such request, so the server answers it once.
    public mutating func takeContinueRequest() -> Bool {
        defer { continueRequested = false }
        return continueRequested
    }

    public init(limits: HTTPLimits = HTTPLimits()) {
        self.limits = limits
    }

    /// Bytes held and not yet parsed into a request.
    public var bufferedByteCount: Int { buffer.count - start }

    /// Whether a request has begun (some of it is buffered) but is not complete.
    public var isInsideRequest: Bool { pendingHead != nil || buffer[start...].contains { $0 != 0x0D && $0 != 0x0A } }

    /// Adds bytes that arrived. The caller bounds how much it appends before taking requests out
    /// (the server reads only while `bufferedByteCount` is below a cap).
    public mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        if start > 0, start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 4096, start * 2 > buffer.count {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next whole request, an error (then every later call returns it too), or nil when more
    /// bytes are needed.
    public mutating func next() -> Result<HTTPRequest, HTTPParseError>? {
        if let failure { return .failure(failure) }
        do throws(HTTPParseError) {
            if pendingHead == nil {
                guard let head = try parseHead() else { return nil }
                pendingHead = head
                let expect = head.request.headers.values(for: "Expect").map { $0.lowercased() }
                continueRequested = head.request.minorVersion == 1 && expect.contains("100-continue")
                    && buffer.count - start < head.bodyLength
            }
            guard let head = pendingHead else { return nil }
            guard buffer.count - start >= head.bodyLength else { return nil }
            continueRequested = false
            var request = head.request
            request.body = Array(buffer[start..<(start + head.bodyLength)])
            start += head.bodyLength
            pendingHead = nil
            return .success(request)
        } catch {
            failure = error
            return .failure(error)
        }
    }

    /// Parses the request line and header section once the blank line that ends it has arrived.
    private mutating func parseHead() throws(HTTPParseError) -> Head? {
        // Empty lines before the request line are ignored (RFC 9112 §2.2).
        while start < buffer.count, buffer[start] == 0x0D || buffer[start] == 0x0A {
            if buffer[start] == 0x0D {
                guard start + 1 < buffer.count else { return nil }
                guard buffer[start + 1] == 0x0A else { throw .badRequest("a bare CR before the request line") }
            }
            start += 1
        }
        // Find the end of the header section: an empty line.
        var lines: [Range<Int>] = []
        var lineStart = start
        var index = start
        var end: Int?
        while index < buffer.count {
            if index - start >= limits.maximumHeaderBytes { throw .headersTooLarge(limits.maximumHeaderBytes) }
            if buffer[index] == 0x0A {
                var lineEnd = index
                if lineEnd > lineStart, buffer[lineEnd - 1] == 0x0D { lineEnd -= 1 }
                if lineEnd == lineStart {
                    end = index + 1
                    break
                }
                lines.append(lineStart..<lineEnd)
                if lines.count > limits.maximumHeaderFields + 1 { throw .headersTooLarge(limits.maximumHeaderBytes) }
                lineStart = index + 1
            }
            index += 1
        }
        guard let end else {
            if buffer.count - start > limits.maximumHeaderBytes { throw .headersTooLarge(limits.maximumHeaderBytes) }
            return nil
        }
        guard let requestLine = lines.first else { throw .badRequest("an empty request") }
        var request = try parseRequestLine(buffer[requestLine])
        for line in lines.dropFirst() {
            request.headers.append(try parseField(buffer[line]))
        }
        start = end
        let bodyLength = try framing(of: &request)
        return Head(request: request, bodyLength: bodyLength)
    }

    /// `method SP request-target SP HTTP-version` (RFC 9112 §3).
    private func parseRequestLine(_ line: ArraySlice<UInt8>) throws(HTTPParseError) -> HTTPRequest {
        let parts = line.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw .badRequest("the request line must be METHOD /path HTTP/1.1")
        }
        guard parts[0].allSatisfy(Self.isTokenCharacter) else { throw .badRequest("the method is not an HTTP token") }
        let methodName = String(decoding: parts[0], as: UTF8.self)
        guard let method = HTTPMethod(rawValue: methodName) else { throw .unknownMethod(methodName) }
        let version = String(decoding: parts[2], as: UTF8.self)
        let minor: Int
        switch version {
        case "HTTP/1.1": minor = 1
        case "HTTP/1.0": minor = 0
        default:
            guard version.hasPrefix("HTTP/"), version.utf8.count == 8 else { throw .badRequest("the request line must end with HTTP/1.1") }
            throw .versionNotSupported(version)
        }
        let target = parts[1]
        // origin-form only (§3.2.1): an absolute path and an optional query. Visible ASCII only.
        guard target.first == UInt8(ascii: "/") else { throw .badRequest("the request target must be a path starting with /") }
        guard target.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw .badRequest("the request target has a character that is not visible ASCII") }
        let question = target.firstIndex(of: UInt8(ascii: "?"))
        let rawPath = target[..<(question ?? target.endIndex)]
        let query = question.map { String(decoding: target[(target.index(after: $0))...], as: UTF8.self) }
        return HTTPRequest(
            method: method, path: String(decoding: rawPath, as: UTF8.self), query: query, minorVersion: minor,
            headers: HTTPHeaders(), body: [])
    }

    /// `field-name ":" OWS field-value OWS` (RFC 9112 §5).
    private func parseField(_ line: ArraySlice<UInt8>) throws(HTTPParseError) -> (name: String, value: String) {
        guard let first = line.first, first != 0x20, first != 0x09 else {
            throw .badRequest("a header line starts with whitespace (obsolete line folding is not accepted)")
        }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { throw .badRequest("a header line has no colon") }
        let name = line[..<colon]
        guard !name.isEmpty, name.allSatisfy(Self.isTokenCharacter) else {
            throw .badRequest("a header name is empty or has a character a name cannot have (whitespace before the colon?)")
        }
        var value = line[line.index(after: colon)...]
        while let byte = value.first, byte == 0x20 || byte == 0x09 { value = value.dropFirst() }
        while let byte = value.last, byte == 0x20 || byte == 0x09 { value = value.dropLast() }
        // field-value: visible characters, spaces, tabs and obs-text; no CR, LF or NUL.
        guard value.allSatisfy({ $0 == 0x09 || $0 >= 0x20 && $0 != 0x7F }) else {
            throw .badRequest("a header value has a control character")
        }
        return (String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
    }

    /// The body's length and whether the connection stays open (RFC 9112 §6.3, §9.3).
    private func framing(of request: inout HTTPRequest) throws(HTTPParseError) -> Int {
        if request.headers.contains("Transfer-Encoding") {
            throw .transferEncodingNotSupported
        }
        var length: Int?
        for value in request.headers.values(for: "Content-Length") {
            // A list (`5, 5`) is allowed when every member is the same (§6.3 item 5).
            for member in value.split(separator: ",", omittingEmptySubsequences: false) {
                let digits = member.trimmingWhitespace
                guard !digits.isEmpty, digits.utf8.count <= 16, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let parsed = Int(digits) else {
                    throw .badRequest("Content-Length must be a decimal number of bytes")
                }
                if let length, length != parsed { throw .badRequest("the request has two different Content-Length values") }
                length = parsed
            }
        }
        let bodyLength = length ?? 0
        guard bodyLength <= limits.maximumBodyBytes else { throw .bodyTooLarge(limits.maximumBodyBytes) }
        let connection = request.headers.values(for: "Connection").flatMap { $0.split(separator: ",").map { $0.trimmingWhitespace.lowercased() } }
        if connection.contains("close") {
            request.keepAlive = false
        } else {
            request.keepAlive = request.minorVersion == 1 || connection.contains("keep-alive")
        }
        return bodyLength
    }

    /// tchar (RFC 9110 §5.6.2).
    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
            UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
            UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            true
        default: false
        }
    }
}

/// The fuzzing entry point: parses `bytes` as the whole input of one connection and returns its
/// first request, or the error it gets (nil when the bytes end before a request does). A libFuzzer
/// harness calls it from `LLVMFuzzerTestOneInput`; it never traps on any input.
public func parseHTTPRequest(_ bytes: UnsafeRawBufferPointer, limits: HTTPLimits = HTTPLimits()) -> Result<HTTPRequest, HTTPParseError>? {
    var parser = HTTPRequestParser(limits: limits)
    parser.append(bytes)
    return parser.next()
}

/// How much of a request the parser holds.
public struct HTTPLimits: Sendable, Equatable {
    /// The request line and header section together, with their line ends.
    public var maximumHeaderBytes: Int
    /// Header fields in one request.
    public var maximumHeaderFields: Int
    /// The body (`Content-Length`).
    public var maximumBodyBytes: Int

    public init(maximumHeaderBytes: Int = 16 << 10, maximumHeaderFields: Int = 100, maximumBodyBytes: Int = 1 << 20) {
        self.maximumHeaderBytes = maximumHeaderBytes
        self.maximumHeaderFields = maximumHeaderFields
        self.maximumBodyBytes = maximumBodyBytes
    }
}

/// The request methods of RFC 9110 §9 and RFC 5789 (PATCH). Any other token is answered 405.
public enum HTTPMethod: String, Sendable, CaseIterable {
    case get = "GET", head = "HEAD", post = "POST", put = "PUT", delete = "DELETE", connect = "CONNECT"
    case options = "OPTIONS", trace = "TRACE", patch = "PATCH"
}

/// One parsed request.
public struct HTTPRequest: Sendable, Equatable {
    public var method: HTTPMethod
    /// The path as sent (still percent-encoded), without the query.
    public var path: String
    /// What follows `?`, if anything.
    public var query: String?
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    public var minorVersion: Int
    public var headers: HTTPHeaders
    public var body: [UInt8]
    /// Whether the connection stays open after the response.
    public var keepAlive: Bool = true
}

/// Header fields in the order they came; names compare case-insensitively (RFC 9110 §5.1).
public struct HTTPHeaders: Sendable, Equatable {
    public private(set) var fields: [(name: String, value: String)] = []

    public init() {}

    public mutating func append(_ field: (name: String, value: String)) { fields.append(field) }

    public func values(for name: String) -> [String] {
        fields.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    public func contains(_ name: String) -> Bool { fields.contains { $0.name.lowercased() == name.lowercased() } }

    public subscript(name: String) -> String? { values(for: name).first }

    public static func == (lhs: HTTPHeaders, rhs: HTTPHeaders) -> Bool {
        lhs.fields.map(\.name) == rhs.fields.map(\.name) && lhs.fields.map(\.value) == rhs.fields.map(\.value)
    }
}

/// Why bytes are not a request: the status to answer with and a sentence for the client.
public struct HTTPParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: HTTPStatus
    public var message: String

    public init(status: HTTPStatus, message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "\(status.code) \(status.reason): \(message)" }

    static func badRequest(_ why: String) -> Self { Self(status: .badRequest, message: "malformed HTTP request: \(why)") }
    static func headersTooLarge(_ limit: Int) -> Self {
        Self(status: .headerFieldsTooLarge, message: "the request line and headers are larger than \(limit) bytes (or have too many fields)")
    }
    static func bodyTooLarge(_ limit: Int) -> Self {
        Self(status: .payloadTooLarge, message: "the request body is larger than the \(limit) bytes this API accepts")
    }
    static let transferEncodingNotSupported = Self(
        status: .notImplemented, message: "Transfer-Encoding (chunked bodies) is not supported: send the body with Content-Length")
    static func unknownMethod(_ method: String) -> Self {
        Self(status: .methodNotAllowed, message: "'\(method)' is not an HTTP method this API knows")
    }
    static func versionNotSupported(_ version: String) -> Self {
        Self(status: .httpVersionNotSupported, message: "\(version) is not supported: use HTTP/1.1")
    }
}

/// The status codes this API answers with.
public struct HTTPStatus: Sendable, Equatable, Hashable {
    public var code: Int
    public var reason: String

    public init(code: Int, reason: String) {
        self.code = code
        self.reason = reason
    }

    public static let ok = Self(code: 200, reason: "OK")
    public static let noContent = Self(code: 204, reason: "No Content")
    public static let badRequest = Self(code: 400, reason: "Bad Request")
    public static let notFound = Self(code: 404, reason: "Not Found")
    public static let methodNotAllowed = Self(code: 405, reason: "Method Not Allowed")
    public static let requestTimeout = Self(code: 408, reason: "Request Timeout")
    public static let conflict = Self(code: 409, reason: "Conflict")
    public static let payloadTooLarge = Self(code: 413, reason: "Content Too Large")
    public static let unsupportedMediaType = Self(code: 415, reason: "Unsupported Media Type")
    public static let headerFieldsTooLarge = Self(code: 431, reason: "Request Header Fields Too Large")
    public static let internalServerError = Self(code: 500, reason: "Internal Server Error")
    public static let notImplemented = Self(code: 501, reason: "Not Implemented")
    public static let serviceUnavailable = Self(code: 503, reason: "Service Unavailable")
    public static let httpVersionNotSupported = Self(code: 505, reason: "HTTP Version Not Supported")
}

extension Substring {
    var trimmingWhitespace: Substring {
        var text = self
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return text
    }
}
