import Testing

@testable import ControlAPI

@Suite struct HTTPRequestParserTests {
    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    func parse(_ text: String, limits: HTTPLimits = HTTPLimits()) -> Result<HTTPRequest, HTTPParseError>? {
        bytes(text).withUnsafeBytes { parseHTTPRequest($0, limits: limits) }
    }

    func status(_ text: String, limits: HTTPLimits = HTTPLimits()) -> Int? {
        switch parse(text, limits: limits) {
        case .failure(let error): error.status.code
        case .success: 200
        case nil: nil
        }
    }

    @Test func parsesARequestLineHeadersAndBody() throws {
        let result = parse("PUT /drives/root?x=1 HTTP/1.1\r\nHost: localhost\r\ncontent-LENGTH: 4\r\nX-Thing:  a b \r\n\r\nabcd")
        let request = try #require(try? result?.get())
        #expect(request.method == .put)
        #expect(request.path == "/drives/root")
        #expect(request.query == "x=1")
        #expect(request.headers["Content-Length"] == "4")
        #expect(request.headers["x-thing"] == "a b")
        #expect(request.body == bytes("abcd"))
        #expect(request.keepAlive)
    }

    @Test func takesBytesOneAtATime() throws {
        let text = "PATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}"
        var parser = HTTPRequestParser()
        var requests: [HTTPRequest] = []
        for byte in bytes(text) {
            parser.append([byte])
            if let result = parser.next() { requests.append(try result.get()) }
        }
        #expect(requests.count == 1)
        #expect(requests.first?.body == bytes("{\"state\":\"Paused\"}"))
        #expect(parser.next() == nil)
        #expect(!parser.isInsideRequest)
    }

    @Test func splitsPipelinedRequestsInOrder() throws {
        var parser = HTTPRequestParser()
        parser.append(bytes("GET / HTTP/1.1\r\n\r\nPUT /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}\nGET /stats HTTP/1.1\n\nGET /x"))
        #expect(try parser.next()?.get().path == "/")
        #expect(try parser.next()?.get().body == bytes("{}"))
        #expect(try parser.next()?.get().path == "/stats")  // bare LF line ends are accepted
        #expect(parser.next() == nil)
        #expect(parser.isInsideRequest)
    }

    @Test func keepAliveFollowsTheVersionAndConnection() throws {
        #expect(try parse("GET / HTTP/1.1\r\n\r\n")?.get().keepAlive == true)
        #expect(try parse("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")?.get().keepAlive == false)
        #expect(try parse("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n")?.get().keepAlive == false)
        #expect(try parse("GET / HTTP/1.0\r\n\r\n")?.get().keepAlive == false)
        #expect(try parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")?.get().keepAlive == true)
    }

    @Test func ignoresEmptyLinesBeforeARequest() throws {
        #expect(try parse("\r\n\r\nGET / HTTP/1.1\r\n\r\n")?.get().path == "/")
        #expect(parse("\r\n") == nil)
    }

    @Test func refusesWhatItCannotTakeWithTheRightStatus() {
        let cases: [(String, Int)] = [
            ("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 17000) + "\r\n\r\n", 431),
            ("GET / HTTP/1.1\r\n" + String(repeating: "X: y\r\n", count: 150) + "\r\n", 431),
            ("GET /" + String(repeating: "a", count: 17000) + " HTTP/1.1\r\n\r\n", 431),
            ("PUT /actions HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n", 413),
            ("PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 501),
            ("FROB / HTTP/1.1\r\n\r\n", 405),
            ("GET / HTTP/2.0\r\n\r\n", 505),
            ("GET / HTTP/1.1 extra\r\n\r\n", 400),
            ("GET /\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\n\r\n", 400),
            ("GET / FTP/1.1\r\n\r\n", 400),
            ("GET http://x/ HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nName : value\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n: empty-name\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: b\u{01}c\r\n\r\n", 400),
            ("PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            ("PUT / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
            ("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
            ("G\u{E9}T / HTTP/1.1\r\n\r\n", 400),
            ("\rGET / HTTP/1.1\r\n\r\n", 400),
        ]
        for (text, expected) in cases {
            #expect(status(text) == expected, "\(text.prefix(60).debugDescription)")
        }
        // The same Content-Length twice, or as a list of equal values, is one length (RFC 9112 §6.3).
        #expect(status("PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\n{}") == 200)
    }

    @Test func staysFailedAfterAnError() {
        var parser = HTTPRequestParser()
        parser.append(bytes("BAD\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
        #expect(parser.next().map { (try? $0.get()) == nil } == true)
        #expect(parser.next().map { (try? $0.get()) == nil } == true)
    }

    @Test func aSmallerLimitIsHonoured() {
        let limits = HTTPLimits(maximumHeaderBytes: 64, maximumHeaderFields: 2, maximumBodyBytes: 8)
        #expect(status("PUT / HTTP/1.1\r\nContent-Length: 9\r\n\r\n", limits: limits) == 413)
        #expect(status("PUT / HTTP/1.1\r\nContent-Length: 8\r\n\r\n12345678", limits: limits) == 200)
        #expect(status("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", limits: limits) == 431)
        // Incomplete but already past the limit: refused before the blank line arrives.
        #expect(status("GET / HTTP/1.1\r\nA: " + String(repeating: "x", count: 80), limits: limits) == 431)
    }

    /// Every prefix of a valid request is "need more" (never an error), and random bytes never trap.
    @Test func prefixesAndNoiseNeverTrap() {
        let valid = bytes("PUT /boot-source HTTP/1.1\r\nContent-Length: 27\r\n\r\n{\"kernel_image_path\":\"/k\"}\n")
        for length in 0..<valid.count {
            let prefix = Array(valid[0..<length])
            #expect(prefix.withUnsafeBytes { parseHTTPRequest($0) } == nil, "prefix of \(length) bytes")
        }
        var generator = SplitMix64(seed: 0x5eed)
        let alphabet = bytes("GET PUT / HTTP/1.1\r\n:Content-Length 0123456789 \t,;chunked\u{0}\u{7F}")
        for _ in 0..<3000 {
            let count = Int(generator.next() % 200)
            let noise = (0..<count).map { _ in
                generator.next() % 4 == 0 ? UInt8(truncatingIfNeeded: generator.next()) : alphabet[Int(generator.next() % UInt64(alphabet.count))]
            }
            var parser = HTTPRequestParser(limits: HTTPLimits(maximumHeaderBytes: 128, maximumHeaderFields: 4, maximumBodyBytes: 64))
            parser.append(noise)
            var steps = 0
            while let result = parser.next(), steps < 100 {
                steps += 1
                if case .failure = result { break }
            }
        }
    }
}

/// A small deterministic generator, so a failing input can be found again.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
