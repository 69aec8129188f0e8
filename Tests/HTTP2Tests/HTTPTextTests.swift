import Testing
@testable import HTTP2

private func parseRequest(_ text: String) -> RequestHead.ParseResult {
    Array(text.utf8).withUnsafeBytes { RequestHead.parse($0) }
}

private func parseResponse(_ text: String) -> ResponseHead? {
    if case .complete(let head) = Array(text.utf8).withUnsafeBytes({ ResponseHead.parse($0) }) { return head }
    return nil
}

private func refusal(_ text: String, limits: HeadLimits = HeadLimits()) -> Int? {
    if case .invalid(let status, _) = Array(text.utf8).withUnsafeBytes({ RequestHead.parse($0, limits: limits) }) { return status }
    return nil
}

private func completeRequest(_ text: String) throws -> RequestHead {
    guard case .complete(let head) = parseRequest(text) else {
        Issue.record("not a complete request head: \(text.debugDescription)")
        throw CancellationError()
    }
    return head
}

@Suite("HTTP/1.1 heads and the h2c upgrade")
struct HTTPTextTests {
    @Test("A request head: line, headers, length")
    func requestHead() throws {
        let text = "POST /portForward/default/web HTTP/1.1\r\nHost: relay:10250\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            + "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: 5\r\nPort:  8080 \r\n\r\nhello"
        let head = try completeRequest(text)
        #expect(head.method == "POST")
        #expect(head.target == "/portForward/default/web")
        #expect(head.version == "HTTP/1.1")
        #expect(head.length == text.utf8.count - 5)
        #expect(head.header("host") == "relay:10250")
        #expect(head.header("PORT") == "8080")
        #expect(head.header("Upgrade") == "h2c")
        #expect(head.contentLength == 5)
        #expect(head.asksForH2C)
        #expect(head.header("x-missing") == nil)
    }

    /// RFC 7540 section 3.2: `Upgrade: h2c`, with `Upgrade` and `HTTP2-Settings` in `Connection`
    /// (what curl --http2, nghttp -u and HTTPText.upgradeRequest send), in an HTTP/1.1 request.
    @Test("asksForH2C", arguments: [
        ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n", true),
        ("connection: upgrade,http2-settings\r\nupgrade: H2C\r\n", true),
        ("Connection: keep-alive, Upgrade , HTTP2-Settings\r\nUpgrade: websocket, h2c\r\n", true),
        ("Connection: Upgrade\r\nConnection: HTTP2-Settings\r\nUpgrade:h2c\r\n", true),
        ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n", true),
        ("Upgrade: h2c\r\n", false),
        ("Connection: Upgrade\r\nUpgrade: h2c\r\n", false),
        ("Connection: HTTP2-Settings\r\nUpgrade: h2c\r\n", false),
        ("Connection: Upgraded, HTTP2-Settings\r\nUpgrade: h2c\r\n", false),
        ("Connection: close\r\nUpgrade: h2c\r\n", false),
        ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: websocket\r\n", false),
        ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2\r\n", false),
        ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2cx\r\n", false),
        ("Connection: Upgrade, HTTP2-Settings\r\n", false),
        ("", false),
    ])
    func asksForH2C(_ fields: String, _ expected: Bool) throws {
        let head = try completeRequest("GET / HTTP/1.1\r\nHost: x\r\n\(fields)\r\n")
        #expect(head.asksForH2C == expected)
    }

    @Test("An HTTP/1.0 request's Upgrade is ignored (RFC 9110 section 7.8)")
    func upgradeInHTTP10() throws {
        let head = try completeRequest("GET / HTTP/1.0\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n")
        #expect(!head.asksForH2C)
    }

    @Test("An incomplete head asks for more bytes",
          arguments: ["", "POST / HTTP/1.1", "POST / HTTP/1.1\r\nHost: x\r\n", "POST / HTTP/1.1\r\nHost: x\r\n\r"])
    func incomplete(_ text: String) {
        guard case .incomplete = parseRequest(text) else {
            Issue.record("\(text.debugDescription) was not incomplete")
            return
        }
    }

    @Test("Malformed heads are invalid",
          arguments: ["GARBAGE\r\n\r\n", "GET /\r\n\r\n", "GET / HTTP/2.0\r\n\r\n", "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
                      "GET / extra HTTP/1.1\r\n\r\n"])
    func invalid(_ text: String) {
        guard case .invalid = parseRequest(text) else {
            Issue.record("\(text.debugDescription) was not refused")
            return
        }
    }

    @Test("The response heads the client reads")
    func responseHead() throws {
        let switching = try #require(parseResponse(HTTPText.switchingProtocols + "PRI"))
        #expect(switching.status == 101)
        #expect(switching.length == HTTPText.switchingProtocols.utf8.count)
        #expect(switching.header("upgrade") == "h2c")
        #expect(switching.header("Connection") == "Upgrade")

        let notFound = HTTPText.response(status: 404, reason: "Not Found", body: "pod \"default/web\" not found")
        let head = try #require(parseResponse(notFound))
        #expect(head.status == 404)
        let body = String(notFound.utf8.dropFirst(head.length))!
        #expect(body == "pod \"default/web\" not found\n")
        #expect(head.header("content-length") == "\(body.utf8.count)")
        #expect(head.header("content-type")?.hasPrefix("text/plain") == true)

        #expect(parseResponse("HTTP/1.1 200 OK\r\n") == nil)
        #expect(parseResponse("HTTP/1.1 abc OK\r\n\r\n") == nil)
    }

    @Test("The client's upgrade request is one the relay accepts")
    func upgradeRequest() throws {
        let settings = HTTPText.settingsPayload(SessionSettings())
        let text = HTTPText.upgradeRequest(path: "/portForward/default/web", authority: "127.0.0.1:10250", settings: settings)
        let head = try completeRequest(text)
        #expect(head.length == text.utf8.count)
        #expect(head.method == "POST")
        #expect(head.target == "/portForward/default/web")
        #expect(head.asksForH2C)
        #expect(head.header("host") == "127.0.0.1:10250")
        #expect(head.contentLength == 0)
        let connection = try #require(head.header("connection")).lowercased()
        #expect(connection.contains("upgrade") && connection.contains("http2-settings"))
        let encoded = try #require(head.header("http2-settings"))
        #expect(!encoded.contains("=") && !encoded.contains("+") && !encoded.contains("/"))
        #expect(Base64URL.decode(encoded) == settings)
    }

    @Test("The SETTINGS payload holds the session's settings, 6 bytes each")
    func settingsPayload() {
        let settings = SessionSettings()
        let payload = HTTPText.settingsPayload(settings)
        #expect(!payload.isEmpty)
        #expect(payload.count == settings.entries.count * 6)
        // INITIAL_WINDOW_SIZE (4) = the stream window.
        var found: UInt32?
        for index in stride(from: 0, to: payload.count, by: 6) where payload[index] == 0 && payload[index + 1] == 4 {
            found = payload[(index + 2)..<(index + 6)].reduce(0) { $0 << 8 | UInt32($1) }
        }
        #expect(found == UInt32(settings.streamWindow))
    }

    @Test("endOfHead")
    func endOfHead() {
        #expect(Array("ab\r\n\r\ncd".utf8).withUnsafeBytes { HTTPText.endOfHead($0) } == 2)
        #expect(Array("\r\n\r".utf8).withUnsafeBytes { HTTPText.endOfHead($0) } == nil)
    }

    @Test("String helpers")
    func helpers() {
        #expect(" \t a b \t".trimmed == "a b")
        #expect(Array("xx\r\n\r\nab\r\n\r\n".utf8).withUnsafeBytes { HTTPText.endOfHead($0, from: 3) } == 8)
    }
}

/// RFC 9112's rules, as the relay must apply them to an upgrade request (the hardening issue:
/// each of these was accepted before).
@Suite("HTTP/1.1 heads: what RFC 9112 refuses")
struct StrictHeadTests {
    static let valid = "POST /portForward/default/web HTTP/1.1\r\nHost: relay\r\nUpgrade: h2c\r\n"

    @Test("Refused with 400", arguments: [
        ("missing Host", "POST / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"),
        ("two Hosts", "POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("Content-Length: abc", valid + "Content-Length: abc\r\n\r\n"),
        ("Content-Length: -1", valid + "Content-Length: -1\r\n\r\n"),
        ("Content-Length: +5", valid + "Content-Length: +5\r\n\r\n"),
        ("20 digits", valid + "Content-Length: 99999999999999999999\r\n\r\n"),
        ("conflicting lengths", valid + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        ("conflicting list", valid + "Content-Length: 5, 6\r\n\r\n"),
        ("empty length", valid + "Content-Length: \r\n\r\n"),
        ("space before colon", valid + "Port : 80\r\n\r\n"),
        ("obs-fold", valid + "X-A: 1\r\n  continued\r\n\r\n"),
        ("bare LF", valid + "X-A: 1\nX-B: 2\r\n\r\n"),
        ("bare CR", valid + "X-A: 1\rX-B: 2\r\n\r\n"),
        ("NUL in value", valid + "X-A: a\u{0}b\r\n\r\n"),
        ("control in value", valid + "X-A: a\u{1}b\r\n\r\n"),
        ("both lengths", valid + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("bad method", "PO ST / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("HTTP/1.2", "POST / HTTP/1.2\r\nHost: a\r\n\r\n"),
        ("two spaces", "POST  / HTTP/1.1\r\nHost: a\r\n\r\n"),
        // Found by Fuzz/FuzzRequestHead: NBSP and NEL are no OWS.
        ("NBSP around a length", valid + "Content-Length: \u{A0}5\u{A0}\r\n\r\n"),
        ("NEL after a length", valid + "Content-Length: 5\u{85}\r\n\r\n"),
    ])
    func refused(_ why: String, _ text: String) {
        #expect(refusal(text) == 400, "\(why)")
    }

    @Test("Equal repeated lengths and leading empty lines are fine")
    func lenient() throws {
        let head = try completeRequest("\r\n" + Self.valid + "Content-Length: 5\r\ncontent-length: 5, 5\r\n\r\nhello")
        #expect(head.contentLength == 5)
        let old = try completeRequest("GET / HTTP/1.0\r\n\r\n")
        #expect(old.header("host") == nil)
    }

    // Found by Fuzz/FuzzRequestHead: values were trimmed as Characters.
    @Test("Only SP and HTAB are taken from around a value")
    func onlyOWSIsTrimmed() throws {
        let head = try completeRequest(Self.valid + "X-A: \t\u{A0}a\u{85} \r\nX-B: b \u{301}\r\n\r\n")
        #expect(Array(head.header("x-a")!.utf8) == Array("\u{A0}a\u{85}".utf8))
        #expect(Array(head.header("x-b")!.utf8) == Array("b \u{301}".utf8))
        let fields = "POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        #expect(try completeRequest(fields + "Upgrade: h2c\r\n\r\n").asksForH2C)
        #expect(try !completeRequest(fields + "Upgrade: h2c\u{A0}\r\n\r\n").asksForH2C)
        #expect(try !completeRequest("POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\u{A0}, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n").asksForH2C)
    }

    @Test("A head over the size limit is 431, complete or not, and so is one with too many fields")
    func tooLarge() {
        let limits = HeadLimits(maxBytes: 1024, maxFields: 10)
        let big = Self.valid + "X-Pad: " + String(repeating: "a", count: 2000) + "\r\n\r\n"
        #expect(refusal(big, limits: limits) == 431)
        #expect(refusal(String(big.dropLast(4)), limits: limits) == 431)
        let many = Self.valid + (0..<11).map { "X-\($0): 1\r\n" }.joined() + "\r\n"
        #expect(refusal(many, limits: limits) == 431)
        #expect(refusal(Self.valid + "\r\n", limits: limits) == nil)
    }

    @Test("An incomplete head says how far it was searched, and searching on from there finds the end")
    func incremental() throws {
        let text = Array((Self.valid + "X-A: 1\r\n\r\n").utf8)
        var scanned = 0
        for end in 1...text.count {
            let result = Array(text[..<end]).withUnsafeBytes { RequestHead.parse($0, scannedBefore: scanned) }
            switch result {
            case .incomplete(let upTo):
                #expect(upTo <= end)
                scanned = upTo
            case .complete(let head):
                #expect(end == text.count && head.length == text.count)
            case .invalid(_, let reason):
                Issue.record("refused at \(end): \(reason)")
            }
        }
    }

    @Test("Response heads: a malformed status line is refused")
    func responses() {
        #expect(parseResponse("HTTP/1.1 101 Switching Protocols\r\n\r\n")?.status == 101)
        #expect(parseResponse("HTTP/1.1 204\r\n\r\n")?.status == 204)
        for bad in ["HTTP/1.1 20 OK\r\n\r\n", "HTTP/2.0 200 OK\r\n\r\n", "garbage\r\n\r\n",
                    "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "HTTP/1.1 099 X\r\n\r\n"] {
            #expect(parseResponse(bad) == nil, "\(bad.debugDescription)")
        }
    }
}

@Suite("base64url")
struct Base64URLTests {
    @Test("Known values, no padding")
    func known() {
        #expect(Base64URL.encode([]) == "")
        #expect(Base64URL.encode(Array("M".utf8)) == "TQ")
        #expect(Base64URL.encode(Array("Ma".utf8)) == "TWE")
        #expect(Base64URL.encode(Array("Man".utf8)) == "TWFu")
        #expect(Base64URL.encode([0xFB, 0xFF, 0xBF]) == "-_-_")
        #expect(Base64URL.decode("TWFu") == Array("Man".utf8))
        // Padding and the standard alphabet are tolerated on input.
        #expect(Base64URL.decode("TWE=") == Array("Ma".utf8))
        #expect(Base64URL.decode("+/+/") == [0xFB, 0xFF, 0xBF])
    }

    @Test("Round trips for every length up to 64 and every byte value")
    func roundTrips() {
        var generator = SystemRandomNumberGenerator()
        for length in 0...64 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let encoded = Base64URL.encode(bytes)
            #expect(encoded.utf8.allSatisfy { $0 != UInt8(ascii: "=") && $0 != UInt8(ascii: "+") && $0 != UInt8(ascii: "/") })
            #expect(encoded.utf8.count == (length * 4 + 2) / 3)
            #expect(Base64URL.decode(encoded) == bytes, "length \(length)")
        }
        let all = (0...255).map { UInt8($0) }
        #expect(Base64URL.decode(Base64URL.encode(all)) == all)
    }

    @Test("Characters outside the alphabet are refused", arguments: ["ab*c", "a b", "é", "AA\n"])
    func invalid(_ text: String) {
        #expect(Base64URL.decode(text) == nil)
    }
}
