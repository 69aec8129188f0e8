import Foundation
import Testing
@testable import HTTP2
@testable import PortForward

/// Every refusal, with the status, phrase and body text the relay answered with before they were
/// one type: these bytes are what clients (kubectl-like tools, scripts matching texts) see.
private let table: [(Refusal, Int, String, String)] = [
    (.unauthorized, 401, "Unauthorized", "Unauthorized"),
    (.forbidden(Forbidden(user: "alice", verb: "create", resource: "pods/portforward", namespace: "prod", name: "web")), 403, "Forbidden",
     "pods \"web\" is forbidden: User \"alice\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"prod\""),
    (.unknownPath("/nope"), 404, "Not Found",
     "unknown path \"/nope\": expected /portForward/<namespace>/<pod> or /proxy/nodes/<node>/portForward/<namespace>/<pod>"),
    (.nodeNotFound("othernode"), 404, "Not Found", "node \"othernode\" not found"),
    (.podNotFound(namespace: "default", name: "web"), 404, "Not Found", "pod \"default/web\" not found"),
    (.podNotOnNode(namespace: "default", name: "web", node: "node-b"), 404, "Not Found", "pod \"default/web\" not found on node \"node-b\""),
    (.podOnSeveralNodes(namespace: "default", name: "web", nodes: ["node-a", "node-b"]), 409, "Conflict",
     "pod \"default/web\" is reported by 2 nodes (node-a, node-b): name one with /proxy/nodes/<node>/portForward/default/web"),
    (.nodeUnavailable(node: "node-a", reason: "connection refused"), 503, "Service Unavailable", "node \"node-a\" is unreachable: connection refused"),
    (.upstream(status: 502, text: "dial tcp: connection refused"), 502, "Bad Gateway", "dial tcp: connection refused"),
    (.badPort(HeadError("missing port header")), 400, "Bad Request", "missing port header"),
    (.tooManyStreams(limit: 32768), 503, "Service Unavailable", "the relay holds 32768 streams (--max-streams): try again later"),
    (.namespaceUnavailable(NamespaceProblem(description: "/run/netns/web does not exist")), 502, "Bad Gateway",
     "/run/netns/web does not exist"),
    (.connectFailed("connection refused"), 502, "Bad Gateway", "connection refused"),
    (.connectTimedOut(port: 5000, seconds: 5), 504, "Gateway Timeout", "timed out connecting to port 5000 after 5s"),
    (.connectTimedOut(port: 80, seconds: 0.25), 504, "Gateway Timeout", "timed out connecting to port 80 after 0.3s"),
    (.handshakeTimeout(seconds: 10), 408, "Request Timeout", "no HTTP/2 preface or complete request within 10 s"),
    (.lengthRequired, 411, "Length Required", "a request body must have a Content-Length"),
    (.bodyTooLarge(limit: 2_097_152), 413, "Content Too Large", "request body larger than 2097152 bytes (the stream window)"),
    (.upgradeRequired, 426, "Upgrade Required",
     "this relay speaks HTTP/2: send Upgrade: h2c with HTTP2-Settings (both named in Connection), or use prior knowledge"),
    (.invalidSettings("SETTINGS payload of 3 bytes"), 400, "Bad Request", "invalid HTTP2-Settings: SETTINGS payload of 3 bytes"),
    (.badRequest("missing Host header"), 400, "Bad Request", "missing Host header"),
    (.headerFieldsTooLarge("head larger than 16384 bytes"), 431, "Request Header Fields Too Large", "head larger than 16384 bytes"),
]

@Suite("Refusal: one mapping to status, reason phrase and body text")
struct RefusalTests {
    @Test("Every case", arguments: table.indices)
    func mapping(_ index: Int) {
        let (refusal, status, phrase, text) = table[index]
        #expect(refusal.status == status, "\(refusal)")
        #expect(refusal.reasonPhrase == phrase, "\(refusal)")
        #expect(refusal.text == text, "\(refusal)")
    }

    @Test("The table covers every case")
    func covered() {
        // A new case makes this switch fail to compile until it is added here and to the table.
        func name(_ refusal: Refusal) -> String {
            switch refusal {
            case .unauthorized: "unauthorized"
            case .forbidden: "forbidden"
            case .unknownPath: "unknownPath"
            case .nodeNotFound: "nodeNotFound"
            case .podNotFound: "podNotFound"
            case .podNotOnNode: "podNotOnNode"
            case .podOnSeveralNodes: "podOnSeveralNodes"
            case .nodeUnavailable: "nodeUnavailable"
            case .upstream: "upstream"
            case .badPort: "badPort"
            case .tooManyStreams: "tooManyStreams"
            case .namespaceUnavailable: "namespaceUnavailable"
            case .connectFailed: "connectFailed"
            case .connectTimedOut: "connectTimedOut"
            case .handshakeTimeout: "handshakeTimeout"
            case .lengthRequired: "lengthRequired"
            case .bodyTooLarge: "bodyTooLarge"
            case .upgradeRequired: "upgradeRequired"
            case .invalidSettings: "invalidSettings"
            case .badRequest: "badRequest"
            case .headerFieldsTooLarge: "headerFieldsTooLarge"
            }
        }
        #expect(Set(table.map { name($0.0) }).count == 21)
    }

    @Test("Names from the peer are quoted at most a name's length")
    func quotedLengths() {
        let long = String(repeating: "a", count: 1000)
        #expect(Refusal.unknownPath("/" + long).text.hasPrefix("unknown path \"/\(String(repeating: "a", count: 255))\": expected"))
        #expect(Refusal.nodeNotFound(long).text == "node \"\(String(repeating: "a", count: 253))\" not found")
        #expect(Refusal.podNotFound(namespace: long, name: long).text
                == "pod \"\(String(repeating: "a", count: 63))/\(String(repeating: "a", count: 253))\" not found")
    }

    @Test("The head parser's refusals: 431 stays 431, the rest are 400 with the parser's reason")
    func invalidHead() {
        let big = Refusal(invalidHead: 431, reason: "more than 100 header fields")
        #expect(big.status == 431 && big.text == "more than 100 header fields")
        let bad = Refusal(invalidHead: 400, reason: "bare LF in head")
        #expect(bad.status == 400 && bad.reasonPhrase == "Bad Request" && bad.text == "bare LF in head")
        // Through the parser itself.
        let head = Array("GET / HTTP/1.1\r\n\r\n".utf8)
        guard case .invalid(let status, let reason) = head.withUnsafeBytes({ RequestHead.parse($0) }) else {
            Issue.record("a 1.1 request without Host must be refused")
            return
        }
        #expect(Refusal(invalidHead: status, reason: reason).text == "missing Host header")
    }

    @Test("The HTTP/1.1 answer a handshake writes: status line, one-line body")
    func handshakeAnswer() {
        let refusal = Refusal.podNotFound(namespace: "default", name: "web")
        let answer = HTTPText.response(status: refusal.status, reason: refusal.reasonPhrase, body: refusal.text)
        #expect(answer == "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + "Content-Length: 28\r\nConnection: close\r\n\r\npod \"default/web\" not found\n")
    }

    @Test("The client shows a 404's text alone, any other status after the server and status")
    func textIsMessage() {
        for (refusal, status, _, _) in table {
            #expect(Refusal.textIsMessage(status: refusal.status) == (status == 404), "\(refusal)")
        }
        #expect(!Refusal.textIsMessage(status: 500) && !Refusal.textIsMessage(status: 200))
    }

    @Test("docs/PROTOCOL.md lists every status with its phrase, as the mapping gives them")
    func documented() throws {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        let protocolText = try String(contentsOfFile: url.path + "/docs/PROTOCOL.md", encoding: .utf8)
        for (refusal, _, _, _) in table {
            let entry = "`\(refusal.status) \(refusal.reasonPhrase)`"
            #expect(protocolText.contains(entry), "docs/PROTOCOL.md does not list \(entry)")
        }
    }
}
