import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// Our client (`portforward forward --protocol h2|websocket|spdy|auto`) against our relay, as real
// processes: kubectl's protocols spoken from our side (issue 12).

/// What `--protocol` forces.
enum WireChoice: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case h2, websocket, spdy
    var testDescription: String { "--protocol \(rawValue)" }
    var arguments: [String] { ["--protocol", rawValue] }
    /// How the client's `-v` line names the session.
    var name: String {
        switch self {
        case .h2: "HTTP/2"
        case .websocket: "SPDY/3.1 in a WebSocket"
        case .spdy: "SPDY/3.1"
        }
    }
    /// The relay's `-v` line for such a session (none for h2: its streams say nothing).
    var relayLine: String? {
        switch self {
        case .h2: nil
        case .websocket: "SPDY/3.1 in a WebSocket for pod default/web"
        case .spdy: "SPDY/3.1 for pod default/web"
        }
    }
}

extension Scene {
    /// A pod with an echo server (and `more` servers: port -> socat address), a relay with `-v`,
    /// and our client speaking `wire` with `-v`.
    func protocolScene(_ wire: WireChoice, copy: CopyChoice? = nil, more: [Int: String] = [:], remotePorts: [Int] = [echoPort],
                       extra: [String] = []) throws -> (PodNamespace, RelayProcess, ForwarderProcess) {
        let namespace = try makeNamespace()
        try serve(in: namespace, port: echoPort)
        for (port, address) in more.sorted(by: { $0.key < $1.key }) { try serve(in: namespace, port: port, address: address) }
        let relay = try startRelay(pods: ["web": namespace], connector: .native, copy: copy, extra: ["-v"])
        let forwarder = try startForwarder(relay: relay, pod: "web", remotePorts: remotePorts, copy: copy,
                                           extra: wire.arguments + ["-v"] + extra)
        return (namespace, relay, forwarder)
    }

    /// Sessions the relay logged for `wire` (h2: none are logged).
    func sessions(_ wire: WireChoice, in relay: RelayProcess) -> Int {
        guard let line = wire.relayLine else { return 0 }
        return relay.child.stderr.components(separatedBy: line).count - 1
    }
}

@Suite("End to end: our client speaking h2, SPDY in a WebSocket and plain SPDY to our relay", .serialized)
struct ClientProtocolTests {
    @Test("16 MiB both ways at once arrive intact, and the session is the protocol asked for",
          arguments: WireChoice.allCases, CopyChoice.allCases)
    func bulk(_ wire: WireChoice, _ copy: CopyChoice) throws {
        try withScene { scene in
            let (_, relay, forwarder) = try scene.protocolScene(wire, copy: copy)
            let payload = Net.randomBytes(16 * mebibyte)
            let received = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, timeout: 90)
            #expect(Net.same(payload, received), "\(Net.firstDifference(payload, received))")
            #expect(forwarder.child.stderr.contains("session to \(relay.url): \(wire.name)\n"), "\(forwarder.child.stderr)")
            if wire != .h2 { #expect(scene.sessions(wire, in: relay) == 1, "\(relay.child.stderr)") }
            #expect(relay.child.isRunning && forwarder.child.isRunning)
            if wire == .websocket {
                // A client's WebSocket payloads are masked as they leave and unmasked as they
                // arrive: they go through its buffers, never a pipe. The relay splices its side.
                if copy == .splice { #expect(relay.child.openPipes() > 0, "the relay holds no pipe: it does not splice") }
                if copy == .buffers { #expect(relay.child.openPipes() == 0 && forwarder.child.openPipes() == 0) }
            } else {
                copy.expectUsed(relay: relay, forwarder: forwarder, connector: .native)
            }
        }
    }

    @Test("Concurrent connections on one session each arrive intact", arguments: WireChoice.allCases)
    func concurrent(_ wire: WireChoice) throws {
        try withScene { scene in
            let (_, relay, forwarder) = try scene.protocolScene(wire)
            try Net.expectConcurrentEchoes(try forwarder.local(echoPort), count: 50, size: 32 * 1024, step: 577, timeout: 60)
            if wire != .h2 { #expect(scene.sessions(wire, in: relay) == 1, "one session for all: \(relay.child.stderr)") }
        }
    }

    @Test("A half-closed connection still gets the whole answer", arguments: WireChoice.allCases)
    func halfClose(_ wire: WireChoice) throws {
        try withScene { scene in
            // 7004 answers only once its input has ended: the digest of everything it read.
            let (_, _, forwarder) = try scene.protocolScene(wire, more: [7004: "EXEC:sha256sum"], remotePorts: [echoPort, 7004])
            try scene.expectHalfClosedAnswers(forwarder, digestPort: 7004)
        }
    }

    @Test("A refused port ends that connection only, with one line; the next connection on the same session works",
          arguments: WireChoice.allCases)
    func refusedPort(_ wire: WireChoice) throws {
        try withScene { scene in
            let (_, relay, forwarder) = try scene.protocolScene(wire, remotePorts: [echoPort, closedPort])
            // A connection in flight on the session while the other is refused.
            let busy = try Net.connect("127.0.0.1", try forwarder.local(echoPort))
            defer { close(busy) }
            var flows = [Flow(fd: busy, payload: Array("before".utf8))]
            try Net.exchange(&flows, timeout: 10)

            let line = try forwarder.refusedLine(closedPort)
            #expect(line == "error: forwarding port \(closedPort) to pod default/web: connection refused", "\(line)")
            usleep(300_000)
            let errors = forwarder.child.stderr.split(separator: "\n").filter { $0.contains("error") || $0.contains("Lost") }
            #expect(errors.count == 1, "error lines: \(errors)")

            // The connection that was open goes on, and a new one works: the same session.
            let more = Array("after".utf8)
            #expect(Glibc.write(busy, more, more.count) == more.count)
            #expect(try Net.read(busy, count: more.count, timeout: 10) == more)
            let payload = Net.randomBytes(256 * 1024)
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload)
            #expect(Net.same(payload, echoed), "\(Net.firstDifference(payload, echoed))")
            if wire != .h2 { #expect(scene.sessions(wire, in: relay) == 1, "\(relay.child.stderr)") }
            #expect(forwarder.child.isRunning && relay.child.isRunning)
        }
    }

    @Test("auto speaks h2 to our relay: over http (the h2c upgrade accepted), over https (ALPN portforward-h2)")
    func autoChoosesH2() throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native, extra: ["-v"])
            let auto = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], extra: ["--protocol", "auto", "-v"])
            let payload = Net.randomBytes(mebibyte)
            var echoed = try Net.echo("127.0.0.1", try auto.local(echoPort), payload)
            #expect(Net.same(payload, echoed))
            #expect(auto.child.stderr.contains("session to \(relay.url): HTTP/2\n"), "\(auto.child.stderr)")
            #expect(!relay.child.stderr.contains("SPDY/3.1"), "\(relay.child.stderr)")

            let files = try TLSFiles(in: scene.directory)
            let (_, tlsRelay) = try scene.tlsRelay(files)
            let secure = try scene.startForwarder(relay: tlsRelay, pod: "web", remotePorts: [echoPort],
                                                  extra: ["--certificate-authority", files.ca, "-v"])
            echoed = try Net.echo("127.0.0.1", try secure.local(echoPort), payload)
            #expect(Net.same(payload, echoed))
            #expect(secure.child.stderr.contains("session to \(tlsRelay.url): HTTP/2\n"), "\(secure.child.stderr)")
            #expect(tlsRelay.child.stderr.contains("ALPN portforward-h2"), "\(tlsRelay.child.stderr)")
        }
    }

    @Test("SPDY and the WebSocket tunnel over https (ALPN http/1.1) with a bearer token; a wrong token is one line",
          arguments: [WireChoice.websocket, .spdy])
    func overTLS(_ wire: WireChoice) throws {
        try withScene { scene in
            let files = try TLSFiles(in: scene.directory)
            let token = "tok-\(E2E.randomSuffix())-secret"
            let tokens = try scene.write("\(token),alice,1001\n", to: "tokens.csv")
            let (_, relay) = try scene.tlsRelay(files, extra: ["--token-auth-file", tokens])
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort],
                                                     extra: wire.arguments + ["--certificate-authority", files.ca, "--token", token, "-v"])
            let payload = Net.randomBytes(4 * mebibyte)
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, timeout: 60)
            #expect(Net.same(payload, echoed), "\(Net.firstDifference(payload, echoed))")
            #expect(forwarder.child.stderr.contains("session to \(relay.url): \(wire.name)\n"), "\(forwarder.child.stderr)")
            #expect(relay.child.stderr.contains("ALPN http/1.1"), "\(relay.child.stderr)")
            #expect(scene.sessions(wire, in: relay) == 1, "\(relay.child.stderr)")

            let refused = try scene.runClient(wire.arguments + ["--server", relay.url, "--certificate-authority", files.ca,
                                                                "--token", "wrong", "web", ":\(echoPort)"])
            let lines = refused.stderr.split(separator: "\n")
            #expect(refused.status != 0 && lines.count == 1 && lines[0].hasPrefix("error: ") && lines[0].contains("Unauthorized"),
                    "\(refused)")
        }
    }

    @Test("The relay restarted: the listeners stay, the client re-dials and speaks the same protocol again",
          arguments: [WireChoice.websocket, .spdy])
    func reconnect(_ wire: WireChoice) throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let pods = "pods:\n  - {namespace: default, name: web, netns: \(namespace.path)}\n"
            let relay = try scene.startRelay(podsFile: pods, connector: .native, extra: ["-v"])
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], extra: wire.arguments)
            let port = try forwarder.local(echoPort)
            try scene.loseRelay(relay, under: forwarder, remote: echoPort)
            let (during, early) = try Net.connectDuringOutage(port)
            defer { close(during) }
            let restarted = try scene.startRelay(podsFile: pods, connector: .native, listen: "127.0.0.1:\(relay.port)", extra: ["-v"])
            #expect(try Net.read(during, count: early.count, timeout: 10) == early)
            let payload = Net.randomBytes(mebibyte)
            let echoed = try Net.echo("127.0.0.1", port, payload)
            #expect(Net.same(payload, echoed))
            #expect(scene.sessions(wire, in: restarted) == 1, "\(restarted.child.stderr)")
            let lines = forwarder.child.stderr.split(separator: "\n")
            #expect(lines.filter { $0.contains("Reconnected") }.count == 1, "\(forwarder.child.stderr)")
        }
    }

    @Test("A pod that comes up late, read again over HTTP/1.1 on connections the relay closes (--max-api-requests 2): the client dials again and forwards once it is Running",
          arguments: [WireChoice.websocket, .spdy])
    func podComesUpLate(_ wire: WireChoice) throws {
        try withScene { scene in
            let name = scene.namespaceName()
            let relay = try scene.startRelay(podsFile: "pods:\n  - {namespace: default, name: web, netns: /run/netns/\(name)}\n",
                                             connector: .native, extra: ["--max-api-requests", "2", "-v"])
            let child = try scene.start([E2E.binary, "forward", "--server", relay.url, "--io", E2E.io, "-v"] + wire.arguments
                                        + ["--pod-running-timeout", "30s", "web", ":\(echoPort)"], name: "forward")
            _ = try child.waitFor("the line saying it waits for the pod") { $0.contains("Waiting up to 30 s for pod default/web") ? true : nil }
            // A few reads, so that the relay has closed a connection or two.
            _ = try relay.child.waitFor("five pod reads", timeout: 20) { text in
                text.components(separatedBy: "api: GET /api/v1/namespaces/default/pods/web").count > 5 ? true : nil
            }
            let namespace = try scene.makeNamespace(named: name)
            try scene.serve(in: namespace, port: echoPort)
            let line = try child.waitFor("a \"Forwarding from\" line", timeout: 20) { text in
                text.split(separator: "\n").first { $0.hasPrefix("Forwarding from 127.0.0.1:") }.map(String.init)
            }
            let local = try #require(line.split(separator: ":").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) })
            let payload = Net.randomBytes(mebibyte)
            #expect(Net.same(payload, try Net.echo("127.0.0.1", local, payload)))
            #expect(scene.sessions(wire, in: relay) == 1, "\(relay.child.stderr)")
            #expect(!child.stderr.contains("error"), "\(child.stderr)")
        }
    }

    @Test("Ctrl-C: the client says GOAWAY and ends with status 0", arguments: [WireChoice.websocket, .spdy])
    func interrupt(_ wire: WireChoice) throws {
        try withScene { scene in
            let (_, relay, forwarder) = try scene.protocolScene(wire)
            let payload = Net.randomBytes(64 * 1024)
            #expect(Net.same(payload, try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload)))
            kill(forwarder.child.pid, SIGINT)
            let status = forwarder.child.wait(timeout: 5)
            #expect(status == 0, "\(forwarder.child.output)")
            #expect(relay.child.isRunning)
        }
    }

    @Test("Plain SPDY against a server not written with our SPDY code (Tests/Peers/spdyserver.py): data intact, a refused port is one line; auto falls back to it; websocket alone is refused with one line")
    func independentServer() throws {
        try Peers.require()
        try withScene { scene in
            let script = E2E.packageRoot + "/Tests/Peers/spdyserver.py"
            // Port 7000 echoes in the server's process; every other port is refused.
            let child = try scene.start([Peers.python, script, "echo:\(echoPort)"], name: "spdyserver")
            let port = try child.waitFor("the line \"listening PORT\"") { text in
                text.split(separator: "\n").first { $0.hasPrefix("listening ") }.flatMap { Int($0.dropFirst("listening ".count)) }
            }
            let server = RelayProcess(child: child, host: "127.0.0.1", port: port)
            for wire in ["spdy", "auto"] {
                let forwarder = try scene.startForwarder(relay: server, pod: "web", remotePorts: [echoPort, closedPort],
                                                         extra: ["--protocol", wire, "-v"])
                let payload = Net.randomBytes(4 * mebibyte)
                var echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, halfClose: true, timeout: 60)
                #expect(Net.same(payload, echoed), "\(wire): \(Net.firstDifference(payload, echoed))")
                #expect(forwarder.child.stderr.contains("session to \(server.url): SPDY/3.1\n"), "\(forwarder.child.stderr)")
                if wire == "auto" {
                    // As kubectl falls back: h2c refused, then the WebSocket tunnel, then plain SPDY.
                    #expect(forwarder.child.stderr.contains("trying SPDY in a WebSocket"), "\(forwarder.child.stderr)")
                    #expect(forwarder.child.stderr.contains("WebSocket upgrade answered 400: trying plain SPDY"), "\(forwarder.child.stderr)")
                }
                let line = try forwarder.refusedLine(closedPort)
                #expect(line == "error: forwarding port \(closedPort) to pod default/web: connection refused", "\(line)")
                echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), Array(payload.prefix(1000)), halfClose: true)
                #expect(echoed == Array(payload.prefix(1000)), "the session goes on after a refused port")
                #expect(forwarder.child.isRunning)
                forwarder.child.kill()
            }
            let refused = try scene.runClient(["--server", server.url, "--protocol", "websocket", "web", ":\(echoPort)"])
            let lines = refused.stderr.split(separator: "\n")
            #expect(refused.status != 0 && lines.count == 1 && lines[0].contains("answered 400 to the upgrade"), "\(refused)")
        }
    }

    /// Tests/Peers/spdyserver.py (plain SPDY only; port 7000 echoes in its process), on `listen`
    /// (0: a free port), over TLS with `files`' server certificate when given; and its port.
    private func startSPDYServer(_ scene: Scene, listen: Int = 0, tls files: TLSFiles? = nil) throws -> (Child, Int) {
        let environment = files.map { ["env", "SPDYSERVER_CERT=\($0.serverCertificate)", "SPDYSERVER_KEY=\($0.serverKey)"] } ?? []
        let child = try scene.start(environment + [Peers.python, E2E.packageRoot + "/Tests/Peers/spdyserver.py", "echo:\(echoPort)", "\(listen)"],
                                    name: "spdyserver")
        let port = try child.waitFor("the line \"listening PORT\"") { text in
            text.split(separator: "\n").first { $0.hasPrefix("listening ") }.flatMap { Int($0.dropFirst("listening ".count)) }
        }
        return (child, port)
    }

    @Test("auto over https to a server that picks h2 for its API but port-forwards only after an HTTP/1.1 upgrade, as a Kubernetes API server: the client never offers plain h2, and ends on plain SPDY")
    func autoOverTLSToAnAPIServer() throws {
        try Peers.require()
        try withScene { scene in
            let files = try TLSFiles(in: scene.directory)
            let (server, port) = try startSPDYServer(scene, tls: files)
            let forwarder = try scene.startForwarder(relay: RelayProcess(child: server, host: "127.0.0.1", port: port, scheme: "https"),
                                                     pod: "web", remotePorts: [echoPort],
                                                     extra: ["--protocol", "auto", "--certificate-authority", files.ca, "-v"])
            let payload = Net.randomBytes(mebibyte)
            #expect(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, halfClose: true) == payload)
            #expect(forwarder.child.stderr.contains("session to https://127.0.0.1:\(port): SPDY/3.1\n"), "\(forwarder.child.stderr)")
            #expect(server.stderr.contains("ALPN http/1.1"), "\(server.stderr)")
            #expect(!server.stderr.contains("ALPN h2"), "the client offered plain h2: \(server.stderr)")
            forwarder.child.kill()
        }
    }

    @Test("auto forgets a protocol the server no longer agrees to: h2 with our relay, then a SPDY-only server on its port: the re-dial falls back through the WebSocket tunnel to plain SPDY")
    func autoForgets() throws {
        try Peers.require()
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], extra: ["--protocol", "auto", "-v"])
            let payload = Net.randomBytes(64 * 1024)
            #expect(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, halfClose: true) == payload)
            #expect(forwarder.child.stderr.contains("session to \(relay.url): HTTP/2\n"), "\(forwarder.child.stderr)")
            relay.child.kill()
            let (server, _) = try startSPDYServer(scene, listen: relay.port)
            _ = try forwarder.child.waitFor("the line saying the session is back", timeout: 20) { text in
                text.contains("Reconnected to relay at") ? true : nil
            }
            #expect(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, halfClose: true) == payload)
            #expect(server.stderr.contains(": h2c refused") && server.stderr.contains(": websocket refused")
                    && server.stderr.contains(": SPDY/3.1"), "\(server.stderr)")
            #expect(forwarder.child.stderr.contains("session to \(relay.url): SPDY/3.1\n"), "\(forwarder.child.stderr)")
            forwarder.child.kill()
        }
    }

    @Test("auto remembers what the server agreed to: after the SPDY-only server restarts, the re-dial asks for plain SPDY at once, without the h2c and WebSocket probes")
    func autoRemembers() throws {
        try Peers.require()
        try withScene { scene in
            let (first, port) = try startSPDYServer(scene)
            let server = RelayProcess(child: first, host: "127.0.0.1", port: port)
            let forwarder = try scene.startForwarder(relay: server, pod: "web", remotePorts: [echoPort], extra: ["--protocol", "auto", "-v"])
            let payload = Net.randomBytes(64 * 1024)
            #expect(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, halfClose: true) == payload)
            // The first dial probed: h2c refused, then the WebSocket tunnel refused, then SPDY.
            #expect(first.stderr.contains(": h2c refused") && first.stderr.contains(": websocket refused"), "\(first.stderr)")
            first.kill()
            let (second, _) = try startSPDYServer(scene, listen: port)
            _ = try forwarder.child.waitFor("the line saying the session is back", timeout: 20) { text in
                text.contains("Reconnected to relay at") ? true : nil
            }
            #expect(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, halfClose: true) == payload)
            #expect(second.stderr.contains(": SPDY/3.1"), "\(second.stderr)")
            #expect(!second.stderr.contains("refused"), "the re-dial probed again: \(second.stderr)")
            forwarder.child.kill()
        }
    }
}
