import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// What the client and the gateway are given that they must refuse or say they ignore, as the real
// binaries: text nested deep enough to overflow a recursive parser (a server's pod answers, a
// kubeconfig, an exec plugin's output, a node relay's pod list), TLS settings kubectl refuses,
// addresses named twice.

/// A server on 127.0.0.1 (Python's standard library, no venv) that answers every GET with 200
/// and lists nested DEPTH deep (its argument): the pod read, or with --node the pod list.
private let deepServer = """
    import http.server, sys
    DEPTH = int(sys.argv[1])
    BODY = ("[" * DEPTH + "]" * DEPTH).encode()
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        def log_message(self, *arguments):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print("listening", server.server_address[1], flush=True)
    server.serve_forever()
    """

/// One line on standard error, exit 1, and no signal (a stack overflow is SIGSEGV, 139).
private func expectOneLine(_ result: (status: Int32, stderr: String, seconds: Double), _ containing: String,
                           sourceLocation: SourceLocation = #_sourceLocation) {
    let lines = result.stderr.split(separator: "\n")
    #expect(result.status == 1, "\(result)", sourceLocation: sourceLocation)
    #expect(lines.count == 1 && lines[0].contains(containing), "\(result)", sourceLocation: sourceLocation)
}

@Suite("End to end: input refused or said (nesting, TLS settings, addresses), by the client and the gateway", .serialized)
struct ClientInputTests {
    @Test("A server's pod read or pod list nested 5,000 deep (10 KB) or 100,000: exit 1 with one line, no crash",
          arguments: [5_000, 100_000])
    func deepPodAnswer(depth: Int) throws {
        try withScene { scene in
            let script = try scene.write(deepServer, to: "deep.py")
            let server = try scene.start(["python3", script, "\(depth)"], name: "deep")
            let port = try server.waitFor("the server's port") { text -> Int? in
                text.split(separator: "\n").first { $0.hasPrefix("listening ") }.flatMap { Int($0.dropFirst(10)) }
            }
            let url = "http://127.0.0.1:\(port)"
            let read = try scene.runClient(["--server", url, "--protocol", "spdy", "web", ":80"])
            expectOneLine(read, "reading pod default/web: the server's answer nests lists and mappings more than 64 deep")
            // --node reads the pod as a list (as the gateway reads a node relay's).
            let list = try scene.runClient(["--server", url, "--protocol", "spdy", "--node", "n1", "web", ":80"])
            expectOneLine(list, "reading pod default/web: the server's answer nests lists and mappings more than 64 deep")
        }
    }

    @Test("A kubeconfig nested 20,000 deep, and an exec plugin that prints 20,000 deep: exit 1 with one line")
    func deepKubeconfigAndPlugin() throws {
        try withScene { scene in
            let deep = String(repeating: "[", count: 20_000) + String(repeating: "]", count: 20_000)
            let config = try scene.write("apiVersion: v1\nclusters: \(deep)\n", to: "deep-kubeconfig")
            expectOneLine(try scene.runClient(["--kubeconfig", config, "web", ":80"]),
                          "kubeconfig \(config):2: lists and mappings nested more than 64 deep")

            let files = try TLSFiles(in: scene.directory)
            let (_, relay) = try scene.tlsRelay(files)
            let output = try scene.write(deep, to: "deep.json")
            let plugin = try scene.write("#!/bin/sh\ncat \(output)\n", to: "plugin.sh")
            chmod(plugin, 0o755)
            let path = try scene.write("""
                current-context: c
                clusters:
                - {name: relay, cluster: {server: "\(relay.url)", certificate-authority: "\(files.ca)"}}
                contexts:
                - {name: c, context: {cluster: relay, user: u}}
                users:
                - {name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: ./plugin.sh}}}
                """, to: "kubeconfig")
            expectOneLine(try scene.runClient(["--kubeconfig", path, "web", ":echo"]),
                          "the plugin's output nests lists and mappings more than 64 deep")
        }
    }

    @Test("The gateway: a node relay whose pod list nests 100,000 deep is unreachable (one line); the other node is served")
    func deepNodePodList() throws {
        try Peers.require()
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: .native)
            let fake = try scene.start([Peers.python, E2E.packageRoot + "/Tests/Peers/deepnode.py", "100000"], name: "deepnode")
            let fakePort = try fake.waitFor("the fake node's port") { text -> Int? in
                text.split(separator: "\n").first { $0.hasPrefix("listening ") }.flatMap { Int($0.dropFirst(10)) }
            }
            let nodes = try scene.write("""
                nodes:
                  - {name: \(scene.node), address: "127.0.0.1:\(relay.port)"}
                  - {name: deep, address: "127.0.0.1:\(fakePort)"}
                """, to: "nodes.yaml")
            let gateway = try scene.start([E2E.binary, "gateway", "--listen", "127.0.0.1:0", "--nodes", nodes, "--io", E2E.io],
                                          name: "gateway")
            let port = try gateway.waitFor("the line \"Gateway listening on 127.0.0.1:PORT\"", timeout: 30) { text -> Int? in
                guard let range = text.range(of: "Gateway listening on 127.0.0.1:") else { return nil }
                return Int(text[range.upperBound...].prefix { $0.isNumber })
            }
            let line = try gateway.waitFor("the line saying node deep is unreachable") { text in
                text.split(separator: "\n").first { $0.contains("node deep unreachable") }.map(String.init)
            }
            #expect(line.contains("the server's answer nests lists and mappings more than 64 deep"), "\(line)")
            // Re-dialled with backoff meanwhile, and not said again.
            sleep(2)
            #expect(gateway.isRunning, "\(gateway.output)")
            #expect(gateway.output.components(separatedBy: "node deep unreachable").count == 2, "\(gateway.output)")
            let forwarder = try scene.startClient(["--server", "http://127.0.0.1:\(port)", "--node", scene.node, "web", ":\(echoPort)"],
                                                  remotes: [echoPort])
            let fd = try Net.connect("127.0.0.1", try forwarder.local(echoPort))
            defer { close(fd) }
            var flows = [Flow(fd: fd, payload: Array("through the gateway".utf8))]
            try Net.exchange(&flows, timeout: 10)
            #expect(gateway.isRunning, "\(gateway.output)")
        }
    }

    @Test("Insecure with a CA, from the flags or from one cluster, is refused as kubectl refuses it")
    func insecureWithCertificateAuthority() throws {
        try withScene { scene in
            let files = try TLSFiles(in: scene.directory)
            let refusal = "specifying a root certificates file with the insecure flag is not allowed"
            let flags = try scene.runClient(["--server", "https://127.0.0.1:1", "--insecure-skip-tls-verify",
                                             "--certificate-authority", files.ca, "web", ":80"])
            expectOneLine(flags, refusal)
            #expect(flags.stderr == "error: \(refusal)\n", "\(flags)")
            let config = try scene.write("""
                current-context: c
                clusters:
                - {name: lab, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true, certificate-authority: "\(files.ca)"}}
                contexts:
                - {name: c, context: {cluster: lab}}
                """, to: "kubeconfig")
            expectOneLine(try scene.runClient(["--kubeconfig", config, "web", ":80"]), refusal)
            // The insecure flag over that kubeconfig drops its CA (client-go's override): no
            // refusal, the dial to port 1 fails instead.
            let overridden = try scene.runClient(["--kubeconfig", config, "--insecure-skip-tls-verify", "web", ":80"])
            #expect(overridden.status == 1 && !overridden.stderr.contains(refusal), "\(overridden)")
        }
    }

    @Test("--address naming an address twice (localhost,127.0.0.1 and 127.0.0.1,127.0.0.1) listens once on it", arguments: [
        "localhost,127.0.0.1", "127.0.0.1,127.0.0.1", "127.0.0.1,localhost",
    ])
    func duplicateAddresses(addresses: String) throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: .native)
            let forwarder = try scene.startClient(["--server", relay.url, "--address", addresses, "web", ":\(echoPort)"],
                                                  remotes: [echoPort])
            let flows = try Net.connect("127.0.0.1", try forwarder.local(echoPort))
            defer { close(flows) }
            var exchange = [Flow(fd: flows, payload: Array("ping".utf8))]
            try Net.exchange(&exchange, timeout: 10)
            #expect(forwarder.child.isRunning, "\(forwarder.child.output)")
            let lines = forwarder.child.output.split(separator: "\n").filter { $0.hasPrefix("Forwarding from 127.0.0.1:") }
            #expect(lines.count == 1, "\(forwarder.child.output)")
            #expect(!forwarder.child.stderr.contains("in use"), "\(forwarder.child.output)")
        }
    }
}
