import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

extension Scene {
    /// `portforward gateway` over `nodes` (name -> URL), on a free loopback port; returns once it
    /// printed its "Gateway listening on" line.
    func startGateway(nodes: [(name: String, url: String)], extra: [String] = []) throws -> RelayProcess {
        let file = "\(directory)/nodes-\(children.count).yaml"
        var yaml = "nodes:\n"
        for node in nodes {
            let address = node.url.hasPrefix("http://") ? String(node.url.dropFirst(7)) : node.url
            yaml += "  - {name: \(node.name), address: \"\(address)\"}\n"
        }
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let child = try start([E2E.binary, "gateway", "--listen", "127.0.0.1:0", "--nodes", file, "--io", E2E.io, "-v"] + extra,
                              name: "gateway")
        let port = try child.waitFor("the line \"Gateway listening on ...\"") { text -> Int? in
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Gateway listening on ") }) else { return nil }
            let address = line.dropFirst("Gateway listening on ".count).prefix { $0 != " " }
            return address.split(separator: ":").last.flatMap { Int($0) }
        }
        return RelayProcess(child: child, host: "127.0.0.1", port: port)
    }
}

@Suite("End to end: the gateway to a node relay over mutual TLS", .serialized)
struct GatewayTLSTests {
    @Test("With the gateway's client certificate (--node-client-certificate) an https node relay that requires one serves it; without, or with the wrong CA, the node is unreachable with the TLS reason")
    func mutualTLS() throws {
        try withScene { scene in
            let files = try TLSFiles(in: scene.directory)
            let (_, relay) = try scene.tlsRelay(files, clientCA: files.ca)
            let gateway = try scene.startGateway(nodes: [("node-a", relay.url)], extra: [
                "--node-certificate-authority", files.ca,
                "--node-client-certificate", files.clientCertificate, "--node-client-key", files.clientKey])
            #expect(gateway.child.stdout.contains("node node-a reachable at 127.0.0.1:\(relay.port) (1 pods)"), "\(gateway.child.output)")
            let forwarder = try scene.startForwarder(relay: gateway, pod: "web", remotePorts: [echoPort])
            let payload = Net.randomBytes(4 << 20)
            #expect(Net.same(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload), payload))
            #expect(relay.child.stderr.contains("client certificate of \"alice\""), "\(relay.child.stderr)")

            // No client certificate: the node relay's alert is the reason. Its pods were never
            // listed, so the gateway does not know them: 404, on the API and on a stream.
            let refused = try scene.startGateway(nodes: [("node-a", relay.url)], extra: ["--node-certificate-authority", files.ca])
            let line = try refused.child.waitFor("the unreachable line") { text in
                text.split(separator: "\n").first { $0.hasPrefix("node node-a unreachable at ") }.map(String.init)
            }
            #expect(line.contains("alert") && line.contains("certificate"), "\(line)")
            let stream = try E2E.run(["curl", "-sS", "--http2-prior-knowledge", "-X", "POST", "-H", "port: \(echoPort)", "-w", "\\n%{http_code}",
                                      "http://127.0.0.1:\(refused.port)/portForward/default/web"], timeout: 10, directory: scene.directory)
            #expect(stream.stdout.hasSuffix("\n404"), "\(stream)")

            // The wrong CA for the node relay's certificate: unreachable, with the verification error.
            let untrusted = try scene.startGateway(nodes: [("node-a", relay.url)], extra: [
                "--node-certificate-authority", files.otherCA,
                "--node-client-certificate", files.clientCertificate, "--node-client-key", files.clientKey])
            let untrustedLine = try untrusted.child.waitFor("the unreachable line") { text in
                text.split(separator: "\n").first { $0.hasPrefix("node node-a unreachable at ") }.map(String.init)
            }
            #expect(untrustedLine.contains("certificate verify failed") || untrustedLine.contains("certificate"), "\(untrustedLine)")
        }
    }
}

@Suite("End to end: a client that stalls does not stall the node connection it shares", .serialized)
struct GatewaySharedConnectionTests {
    @Test("One client's stalled streams pause its own connection (--max-held-bytes), not the node connection: another client's echo through the same node goes on")
    func stalledClient() throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: .native)
            // 4 MiB: two stalled streams' windows fill it.
            let gateway = try scene.startGateway(nodes: [("node-a", relay.url)], extra: ["--max-held-bytes", "\(4 << 20)"])
            let stalled = try scene.startForwarder(relay: gateway, pod: "web", remotePorts: [echoPort])
            let healthy = try scene.startForwarder(relay: gateway, pod: "web", remotePorts: [echoPort])
            // Six connections that write to the echo pod and never read, for 4 s: past the
            // kernel's socket buffers and the client's windows, their echoes fill each node
            // stream's window in the gateway (2 MiB each).
            var sockets: [Int32] = []
            defer { for fd in sockets { close(fd) } }
            let chunk = [UInt8](repeating: 7, count: 1 << 16)
            for _ in 0..<6 {
                let fd = try Net.connect("127.0.0.1", try stalled.local(echoPort))
                var small: Int32 = 64 << 10
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                sockets.append(fd)
            }
            let until = Date().addingTimeInterval(4)
            while Date() < until {
                var moved = false
                for fd in sockets where chunk.withUnsafeBytes({ write(fd, $0.baseAddress!, $0.count) }) > 0 { moved = true }
                if !moved { usleep(20_000) }
            }
            usleep(500_000)
            let payload = Net.randomBytes(1 << 20)
            let started = Date()
            let echoed = try Net.echo("127.0.0.1", try healthy.local(echoPort), payload, timeout: 10)
            #expect(Net.same(echoed, payload), "another client's echo through the same node")
            #expect(Date().timeIntervalSince(started) < 5, "\(Date().timeIntervalSince(started)) s")
            #expect(gateway.child.isRunning)
        }
    }
}
