import Testing
@testable import PortForward

@Suite("Port specifications")
struct PortSpecTests {
    @Test("A bare port forwards that port to itself")
    func barePort() throws {
        #expect(try PortSpec(parsing: "5000") == PortSpec(local: 5000, remote: 5000))
        #expect(try PortSpec(parsing: "1") == PortSpec(local: 1, remote: 1))
        #expect(try PortSpec(parsing: "65535") == PortSpec(local: 65535, remote: 65535))
    }

    @Test("LOCAL:REMOTE")
    func localAndRemote() throws {
        #expect(try PortSpec(parsing: "6000:5000") == PortSpec(local: 6000, remote: 5000))
        #expect(try PortSpec(parsing: "6000:5000").description == "6000:5000")
    }

    @Test("An empty or zero local port asks for a free port", arguments: [":5000", "0:5000"])
    func freeLocalPort(_ text: String) throws {
        #expect(try PortSpec(parsing: text) == PortSpec(local: 0, remote: 5000))
    }

    @Test("Malformed specifications and ports out of range are refused",
          arguments: ["", "a", "1:2:3", "70000", "0", "-1", "5000:", "5000:0", "65536", "6000:70000",
                      "x:5000", "50 00", "+5000", ":", "5000:a", "100000"])
    func malformed(_ text: String) {
        #expect(throws: PortSpec.ParseError.self) { try PortSpec(parsing: text) }
    }

    @Test("The error names the specification")
    func errorMentionsSpec() {
        do {
            _ = try PortSpec(parsing: "70000")
            Issue.record("70000 was accepted")
        } catch {
            #expect("\(error)".contains("70000"))
        }
    }

    @Test("parseAll keeps order and accepts several free ports")
    func parseAll() throws {
        let specs = try PortSpec.parseAll(["8080", ":9090", "0:9091", "7000:80"])
        #expect(specs == [PortSpec(local: 8080, remote: 8080), PortSpec(local: 0, remote: 9090),
                          PortSpec(local: 0, remote: 9091), PortSpec(local: 7000, remote: 80)])
    }

    @Test("parseAll refuses a local port given twice",
          arguments: [["5000", "5000"], ["5000", "5000:6000"], ["7000:1", "7000:2"], ["80", "1:2", "80:80"]])
    func duplicates(_ texts: [String]) {
        #expect(throws: PortSpec.ParseError.self) { try PortSpec.parseAll(texts) }
    }

    @Test("parseAll refuses an empty list and any malformed entry")
    func parseAllErrors() {
        #expect(throws: PortSpec.ParseError.self) { try PortSpec.parseAll([]) }
        #expect(throws: PortSpec.ParseError.self) { try PortSpec.parseAll(["5000", "nope"]) }
    }
}

@Suite("Forward paths")
struct ForwardPathTests {
    @Test("The node's own path")
    func nodePath() throws {
        let path = try #require(ForwardPath(parsing: "/portForward/default/web"))
        #expect(path == ForwardPath(node: nil, namespace: "default", pod: "web"))
        #expect(path.path == "/portForward/default/web")
    }

    @Test("The API server's path")
    func apiServerPath() throws {
        let path = try #require(ForwardPath(parsing: "/proxy/nodes/node-1/portForward/kube-system/dns"))
        #expect(path == ForwardPath(node: "node-1", namespace: "kube-system", pod: "dns"))
        #expect(path.path == "/proxy/nodes/node-1/portForward/kube-system/dns")
    }

    @Test("The API server's pod subresource, the URL kubectl asks on")
    func subresourcePath() throws {
        let path = try #require(ForwardPath(parsing: "/api/v1/namespaces/kube-system/pods/dns.1/portforward"))
        #expect(path == ForwardPath(namespace: "kube-system", pod: "dns.1", subresource: true))
        #expect(path.node == nil)
        #expect(path.path == "/api/v1/namespaces/kube-system/pods/dns.1/portforward")
        // The query kubectl's WebSocket-only clients add (`?ports=`) names no other pod.
        #expect(ForwardPath(parsing: "/api/v1/namespaces/default/pods/web/portforward?ports=80") == ForwardPath(namespace: "default", pod: "web", subresource: true))
        // That URL names no node: one given is dropped, rather than making a path that says otherwise.
        #expect(ForwardPath(node: "n", namespace: "a", pod: "b", subresource: true).node == nil)
    }

    @Test("A query string is ignored")
    func query() throws {
        let path = try #require(ForwardPath(parsing: "/portForward/default/web?ports=80"))
        #expect(path == ForwardPath(namespace: "default", pod: "web"))
    }

    @Test("Building and parsing round-trip",
          arguments: [ForwardPath(namespace: "a", pod: "b"), ForwardPath(node: "n", namespace: "ns", pod: "p-1"),
                      ForwardPath(namespace: "ns", pod: "p.2", subresource: true)])
    func roundTrip(_ path: ForwardPath) {
        #expect(ForwardPath(parsing: path.path) == path)
        #expect(path.description == path.path)
    }

    @Test("Other paths are refused",
          arguments: ["", "/", "/portForward", "/portForward/default", "/portForward/default/", "/portForward//web",
                      "portForward/default/web", "/portforward/default/web", "/portForward/default/web/extra",
                      "/proxy/nodes/n/portForward/ns", "/proxy/nodes//portForward/ns/p",
                      "/proxy/nodes/n/portForward/ns/", "/proxy/node/n/portForward/ns/p",
                      "/proxy/nodes/n/forward/ns/p", "*",
                      "/api/v1/namespaces/default/pods/web", "/api/v1/namespaces//pods/web/portforward",
                      "/api/v1/namespaces/default/pods//portforward", "/api/v1/namespaces/default/pods/web/portForward",
                      "/api/v1/namespaces/default/pods/web/portforward/", "/apis/v1/namespaces/default/pods/web/portforward",
                      "/api/v2/namespaces/default/pods/web/portforward", "api/v1/namespaces/default/pods/web/portforward"])
    func refused(_ text: String) {
        #expect(ForwardPath(parsing: text) == nil)
    }

    // Found by Fuzz/FuzzForwardPath: split as Characters, "/\u{301}" was no separator.
    @Test("A \"/\" followed by a combining mark still separates")
    func slashBeforeCombiningMark() throws {
        #expect(ForwardPath(parsing: "/portForward/default/a/\u{301}b") == nil)
        let path = try #require(ForwardPath(parsing: "/portForward/\u{301}ns/\u{301}pod"))
        #expect(path == ForwardPath(namespace: "\u{301}ns", pod: "\u{301}pod"))
    }
}
