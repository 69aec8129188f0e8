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
        let name = upgrade.frontEnd == .spdy ? "spdy" : upgrade.frontEnd == .spdyOverWebSocket ? "spdy-ws" : "h2c"
        return "\(name) \(upgrade.request.method) \(upgrade.request.target) body=\(String(decoding: upgrade.body, as: UTF8.self)) rest=\(String(decoding: initial, as: UTF8.self))"
    case .serve(let api): return "api \(api.request.method) \(api.request.target) \(api.keepAlive ? "keep" : "close")"
    case .close: return "close"
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
        // Kubernetes API requests, as kubectl makes them before it port-forwards.
        HandshakeCase(name: "an API request is served, and the connection kept",
                      reads: ["GET /version?timeout=5s HTTP/1.1\r\nHost: relay\r\nAccept: application/json\r\n\r\n"],
                      decisions: ["api GET /version?timeout=5s keep"]),
        HandshakeCase(name: "an API request in pieces is waited for",
                      reads: ["GET /api/v1/namespaces/default/pods/web HTTP/1.1\r\n", "Host: relay\r\n\r\n"],
                      decisions: ["more", "api GET /api/v1/namespaces/default/pods/web keep"]),
        HandshakeCase(name: "Connection: close is honoured",
                      reads: ["GET /apis HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"], decisions: ["api GET /apis close"]),
        HandshakeCase(name: "HTTP/1.0 closes unless it asks to keep the connection",
                      reads: ["GET /api HTTP/1.0\r\n\r\n"], decisions: ["api GET /api close"]),
        HandshakeCase(name: "HTTP/1.0 with Connection: keep-alive keeps it",
                      reads: ["GET /api HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"], decisions: ["api GET /api keep"]),
        HandshakeCase(name: "an API request's body is waited for before the answer",
                      reads: ["POST /api/v1/pods HTTP/1.1\r\nHost: relay\r\nContent-Length: 3\r\n\r\nab", "c"],
                      decisions: ["more", "api POST /api/v1/pods keep"]),
        HandshakeCase(name: "an API path names no pod: an unknown one is the API's to answer",
                      reads: ["GET /api/v1/namespaces/default/pods/nope HTTP/1.1\r\nHost: relay\r\n\r\n"],
                      decisions: ["api GET /api/v1/namespaces/default/pods/nope keep"]),
        HandshakeCase(name: "kubectl's WebSocket tunnel on the pod's portforward URL is upgraded",
                      reads: ["GET /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\n"
                              + "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n\r\n"],
                      decisions: ["spdy-ws GET /api/v1/namespaces/default/pods/web/portforward body= rest="]),
        HandshakeCase(name: "a WebSocket upgrade for a subprotocol not spoken yet is the API's to refuse, and closes",
                      reads: ["GET /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\n"
                              + "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"],
                      decisions: ["api GET /api/v1/namespaces/default/pods/web/portforward close"]),
        HandshakeCase(name: "kubectl's SPDY upgrade on the pod's portforward URL is upgraded",
                      reads: ["POST /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n"
                              + "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n"],
                      decisions: ["spdy POST /api/v1/namespaces/default/pods/web/portforward body= rest="]),
        HandshakeCase(name: "a SPDY upgrade for another stream protocol is the API's to refuse, and closes",
                      reads: ["POST /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n"
                              + "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"],
                      decisions: ["api POST /api/v1/namespaces/default/pods/web/portforward close"]),
        HandshakeCase(name: "an h2c upgrade on the pod's portforward URL is upgraded",
                      reads: [upgrade("/api/v1/namespaces/default/pods/web/portforward")],
                      decisions: ["h2c POST /api/v1/namespaces/default/pods/web/portforward body= rest="]),
        HandshakeCase(name: "an h2c upgrade on the portforward URL of an unknown pod is refused as before",
                      reads: [upgrade("/api/v1/namespaces/default/pods/nope/portforward")],
                      decisions: ["404 pod \"default/nope\" not found"]),
        HandshakeCase(name: "an h2c upgrade to an API path that is no pod's portforward URL is refused as before",
                      reads: [upgrade("/api/v1")], decisions: ["404 pod \"default/nope\" not found"]),
        HandshakeCase(name: "an API request whose head is over the limit is a 431 all the same",
                      reads: ["GET /api HTTP/1.1\r\nX: " + String(repeating: "a", count: 600) + "\r\n\r\n"], decisions: ["431"]),
        HandshakeCase(name: "an API request whose body is over the limit is a 413 all the same",
                      reads: ["POST /api HTTP/1.1\r\nHost: relay\r\nContent-Length: 2000\r\n\r\n"],
                      decisions: ["413 request body larger than 1000 bytes (the stream window)"]),
        HandshakeCase(name: "a head over the limit is a 431, however it arrives",
                      reads: ["POST / HTTP/1.1\r\n", "X: " + String(repeating: "a", count: 600) + "\r\n"],
                      decisions: ["more", "431"]),
    ]

    private static func handshake(maxRequests: Int = 100) -> Handshake {
        Handshake(limits: Handshake.Limits(maxHead: 512, maxBody: 1000, maxRequests: maxRequests)) { target in
            target == "/portForward/default/web" || target == "/api/v1/namespaces/default/pods/web/portforward"
                ? nil : .podNotFound(namespace: "default", name: "nope")
        }
    }

    private static func receive(_ handshake: inout Handshake, _ text: String) -> String {
        describe(Array(text.utf8).withUnsafeBytes { handshake.receive($0) })
    }

    @Test("Pipelined API requests are served one after the other, then an upgrade on the same connection")
    func pipelined() {
        var handshake = Self.handshake()
        let get = "GET /api HTTP/1.1\r\nHost: relay\r\n\r\n"
        let post = "POST /apis HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\n\r\nxy"
        #expect(Self.receive(&handshake, get + post + "GET /ver") == "api GET /api keep")
        #expect(describe(handshake.nextRequest()) == "api POST /apis keep")
        #expect(describe(handshake.nextRequest()) == "more")
        #expect(Self.receive(&handshake, "sion HTTP/1.1\r\nHost: relay\r\n\r\n") == "api GET /version keep")
        #expect(describe(handshake.nextRequest()) == "more")
        #expect(Self.receive(&handshake, upgrade() + "PRI") == "h2c POST /portForward/default/web body= rest=PRI")
        #expect(handshake.served == 3)
    }

    @Test("The last request a connection may make is answered with Connection: close")
    func requestLimit() {
        var handshake = Self.handshake(maxRequests: 3)
        let get = "GET /api HTTP/1.1\r\nHost: relay\r\n\r\n"
        #expect(Self.receive(&handshake, get + get + get + get) == "api GET /api keep")
        #expect(describe(handshake.nextRequest()) == "api GET /api keep")
        #expect(describe(handshake.nextRequest()) == "api GET /api close")
        #expect(handshake.served == 3)
    }

    @Test("A kept connection idle past the timeout is closed without a word; one halfway through a request gets 408")
    func keptAliveTimeout() {
        var idle = Self.handshake()
        _ = Self.receive(&idle, "GET /api HTTP/1.1\r\nHost: relay\r\n\r\n")
        #expect(describe(idle.nextRequest()) == "more")
        #expect(describe(idle.timedOut(after: 10)) == "close")

        var halfway = Self.handshake()
        _ = Self.receive(&halfway, "GET /api HTTP/1.1\r\nHost: relay\r\n\r\n")
        #expect(describe(halfway.nextRequest()) == "more")
        _ = Self.receive(&halfway, "GET /ap")
        #expect(describe(halfway.timedOut(after: 10)) == "408 no HTTP/2 preface or complete request within 10 s")
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

    @Test("Authorization comes before the target is resolved, on upgrades only: API requests are checked where they are answered")
    func authorizeFirst() {
        let access = AccessControl(tokens: try! TokenFile(csv: "good,alice,1\n"),
                                   rules: try! AccessRules(yaml: "allow:\n  - {user: alice, namespaces: [default]}\n"))
        func handshake() -> Handshake {
            Handshake(limits: Handshake.Limits(maxHead: 512, maxBody: 1000), resolve: { target in
                target == "/portForward/default/web" ? nil : .podNotFound(namespace: "x", name: "nope")
            }, authorize: { request in
                guard let path = ForwardPath(parsing: request.target) else {
                    return access.check(authorization: request.header("authorization"), certificate: nil, .nonResource(verb: "create", path: request.target))
                }
                return access.check(authorization: request.header("authorization"), certificate: nil,
                                    .portForward(namespace: path.namespace, pod: path.pod))
            })
        }
        var anonymous = handshake()
        #expect(Self.receive(&anonymous, upgrade("/portForward/prod/nope")) == "401 Unauthorized")
        var forbidden = handshake()
        #expect(Self.receive(&forbidden, upgrade("/portForward/prod/nope", extra: "Authorization: Bearer good\r\n"))
                == #"403 pods "nope" is forbidden: User "alice" cannot create resource "pods/portforward" in API group "" in the namespace "prod""#)
        var missing = handshake()
        #expect(Self.receive(&missing, upgrade("/portForward/default/nope", extra: "Authorization: Bearer good\r\n")) == "404 pod \"x/nope\" not found")
        var allowed = handshake()
        #expect(Self.receive(&allowed, upgrade(extra: "authorization: bearer good\r\n")) == "h2c POST /portForward/default/web body= rest=")
        var api = handshake()
        #expect(Self.receive(&api, "GET /api/v1/namespaces/prod/pods/web HTTP/1.1\r\nHost: relay\r\n\r\n") == "api GET /api/v1/namespaces/prod/pods/web keep")
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

    @Test("Protocol detection: API paths, and not their look-alikes")
    func apiDetection() throws {
        func detect(_ target: String, _ fields: String = "") throws -> FrontEnd {
            let text = "GET \(target) HTTP/1.1\r\nHost: x\r\n\(fields)\r\n"
            guard case .complete(let head) = Array(text.utf8).withUnsafeBytes({ RequestHead.parse($0, limits: HeadLimits()) }) else {
                throw HarnessFailure("unparsed: \(text)")
            }
            return FrontEnd.detect(head)
        }
        for target in ["/version", "/version?timeout=5s", "/api", "/api?timeout=32s", "/apis", "/api/v1", "/apis/apps/v1",
                       "/api/v1/pods", "/api/v1/namespaces/default/pods/web/portforward"] {
            #expect(try detect(target) == .api, "\(target)")
        }
        for target in ["/", "/apiv1", "/versions", "/portForward/default/web", "*", "/healthz"] {
            #expect(try detect(target) == .unsupported, "\(target)")
        }
        let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \(settings)\r\n"
        #expect(try detect("/api/v1/namespaces/default/pods/web/portforward", h2c) != .api)
    }
}

struct HarnessFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
