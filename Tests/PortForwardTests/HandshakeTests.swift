import Testing
import HTTP2
@testable import PortForward

/// What a handshake decided, in words a table can hold.
private func describe(_ decision: Handshake.Decision) -> String {
    switch decision {
    case .needMore: return "more"
    case .sendContinue: return "continue"
    case .refuse(let refusal): return "\(refusal.status) \(refusal.text)"
    case .priorKnowledge(let initial): return "h2 \(initial.count)"
    case .upgrade(let upgrade, let initial):
        return "h2c \(upgrade.request.method) \(upgrade.request.target) body=\(String(decoding: upgrade.body, as: UTF8.self)) rest=\(String(decoding: initial, as: UTF8.self))"
    }
}

struct HandshakeCase: Sendable, CustomTestStringConvertible {
    var name: String
    /// The bytes as they arrive, one read each.
    var reads: [String]
    /// The decision after each read.
    var decisions: [String]
    var testDescription: String { name }
}

private let settings = "AAMAAABkAAQCAAAAAAIAAAAA"
private func upgrade(_ path: String = "/portForward/default/web", extra: String = "") -> String {
    "POST \(path) HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \(settings)\r\nport: 80\r\n\(extra)\r\n"
}

@Suite("Handshake: a connection's first bytes in, a decision out")
struct HandshakeTests {
    static let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    static let cases: [HandshakeCase] = [
        HandshakeCase(name: "the HTTP/2 preface, whole", reads: [preface], decisions: ["h2 24"]),
        HandshakeCase(name: "the preface in pieces, with the first frame behind it",
                      reads: ["PRI * HT", "TP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\u{4}"], decisions: ["more", "h2 28"]),
        HandshakeCase(name: "an h2c upgrade with no body, bytes after it are the session's",
                      reads: [upgrade() + "PRI"], decisions: ["h2c POST /portForward/default/web body= rest=PRI"]),
        HandshakeCase(name: "an upgrade head that arrives a line at a time",
                      reads: ["POST /portForward/default/web HTTP/1.1\r\n", "Host: relay\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n",
                              "HTTP2-Settings: \(settings)\r\n\r\n"],
                      decisions: ["more", "more", "h2c POST /portForward/default/web body= rest="]),
        HandshakeCase(name: "a body split over reads is waited for",
                      reads: [upgrade(extra: "Content-Length: 5\r\n") + "he", "llo"],
                      decisions: ["more", "h2c POST /portForward/default/web body=hello rest="]),
        HandshakeCase(name: "Expect: 100-continue is answered once, then the body is waited for",
                      reads: [upgrade(extra: "Content-Length: 5\r\nExpect: 100-continue\r\n"), "hel", "lo"],
                      decisions: ["continue", "more", "h2c POST /portForward/default/web body=hello rest="]),
        HandshakeCase(name: "a plain request is told to upgrade",
                      reads: ["GET /portForward/default/web HTTP/1.1\r\nHost: relay\r\n\r\n"],
                      decisions: ["426 this relay speaks HTTP/2: send Upgrade: h2c with HTTP2-Settings (both named in Connection), or use prior knowledge"]),
        HandshakeCase(name: "a WebSocket upgrade is not spoken (yet)",
                      reads: ["GET /portForward/default/web HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n\r\n"],
                      decisions: ["426 this relay speaks HTTP/2: send Upgrade: h2c with HTTP2-Settings (both named in Connection), or use prior knowledge"]),
        HandshakeCase(name: "an unknown pod is refused before the protocol is looked at",
                      reads: ["GET /portForward/default/nope HTTP/1.1\r\nHost: relay\r\n\r\n"],
                      decisions: ["404 pod \"default/nope\" not found"]),
        HandshakeCase(name: "the target * opens a session without naming a pod",
                      reads: [upgrade("*")], decisions: ["h2c POST * body= rest="]),
        HandshakeCase(name: "a chunked body is refused: the length must be known",
                      reads: [upgrade(extra: "Transfer-Encoding: chunked\r\n")],
                      decisions: ["411 a request body must have a Content-Length"]),
        HandshakeCase(name: "a body larger than a stream window is refused at once",
                      reads: [upgrade(extra: "Content-Length: 2000\r\n")],
                      decisions: ["413 request body larger than 1000 bytes (the stream window)"]),
        HandshakeCase(name: "a malformed head is a 400",
                      reads: ["POST / HTTP/1.1\r\nHost : relay\r\n\r\n"], decisions: ["400"]),
        HandshakeCase(name: "a head over the limit is a 431, however it arrives",
                      reads: ["POST / HTTP/1.1\r\n", "X: " + String(repeating: "a", count: 600) + "\r\n"],
                      decisions: ["more", "431"]),
    ]

    private static func handshake() -> Handshake {
        Handshake(limits: Handshake.Limits(maxHead: 512, maxBody: 1000)) { target in
            target == "/portForward/default/web" ? nil : .podNotFound(namespace: "default", name: "nope")
        }
    }

    @Test("Decision", arguments: cases)
    func decision(_ example: HandshakeCase) {
        var handshake = Self.handshake()
        #expect(example.reads.count == example.decisions.count)
        for (read, expected) in zip(example.reads, example.decisions) {
            let decision = Array(read.utf8).withUnsafeBytes { handshake.receive($0) }
            let said = describe(decision)
            // A refusal from the head parser is checked by its status; its reason is HTTPHead's.
            if expected.count == 3 {
                #expect(said.hasPrefix(expected + " "), "after \(read.debugDescription)")
            } else {
                #expect(said == expected, "after \(read.debugDescription)")
            }
        }
        #expect(handshake.decided == example.decisions.last.map { $0 != "more" && $0 != "continue" })
    }

    @Test("No complete request within the timeout: 408")
    func timeout() {
        var handshake = Self.handshake()
        _ = Array("POST / HT".utf8).withUnsafeBytes { handshake.receive($0) }
        #expect(describe(handshake.timedOut(after: 10)) == "408 no HTTP/2 preface or complete request within 10 s")
    }

    @Test("Protocol detection: h2c needs a decodable HTTP2-Settings")
    func detection() throws {
        func head(_ fields: String) -> RequestHead? {
            let text = "GET / HTTP/1.1\r\nHost: x\r\n\(fields)\r\n"
            if case .complete(let head) = Array(text.utf8).withUnsafeBytes({ RequestHead.parse($0, limits: HeadLimits()) }) {
                return head
            }
            return nil
        }
        let connection = "Connection: Upgrade, HTTP2-Settings\r\n"
        #expect(FrontEnd.detect(try #require(head(connection + "Upgrade: h2c\r\nHTTP2-Settings: \(settings)\r\n"))) != .unsupported)
        // Without Connection naming the upgrade, it may have come from another hop.
        #expect(FrontEnd.detect(try #require(head("Upgrade: h2c\r\nHTTP2-Settings: \(settings)\r\n"))) == .unsupported)
        #expect(FrontEnd.detect(try #require(head(connection + "Upgrade: h2c\r\nHTTP2-Settings: @@@\r\n"))) == .unsupported)
        #expect(FrontEnd.detect(try #require(head("Upgrade: h2c\r\n"))) == .unsupported)
        #expect(FrontEnd.detect(try #require(head("Upgrade: SPDY/3.1\r\n"))) == .unsupported)
    }
}
