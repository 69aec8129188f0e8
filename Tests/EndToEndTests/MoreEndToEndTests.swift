import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

private let greeterPort = 7005   // socat ... SYSTEM:echo hello: answers and closes first
private let stuckPort = 7006     // a listener that never accepts, its backlog full

/// Closes `fd` with a reset (SO_LINGER 0).
private func resetClose(_ fd: Int32) {
    var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    close(fd)
}

/// A listening socket on `ip` (127.0.0.1 or ::1) and a free port (0) or `port`.
private func listenSocket(_ ip: String, port: Int) throws -> (fd: Int32, port: Int) {
    let isV6 = ip.contains(":")
    let fd = socket(isV6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var storage = sockaddr_storage()
    var length: socklen_t
    if isV6 {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET6, ip, &address.sin6_addr)
        length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        withUnsafeBytes(of: address) { raw in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: raw) } }
    } else {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, ip, &address.sin_addr)
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeBytes(of: address) { raw in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: raw) } }
    }
    let ok = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard ok else {
        let reason = String(cString: strerror(errno))
        close(fd)
        throw HarnessError("listen on \(ip) port \(port): \(reason)")
    }
    let bound = withUnsafeBytes(of: storage) { Int(UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self))) }
    return (fd, bound)
}

extension EndToEndTests {
    /// After connections of every kind have come and gone, the relay and the client hold as many
    /// sockets as when they were idle, the pod has no connection left open, and the nsenter
    /// connector's socat processes are gone (no zombies).
    @Test("Nothing is left behind: sockets, pod connections, child processes", arguments: ConnectorKind.allCases)
    func noLeaks(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            try scene.serve(in: namespace, port: greeterPort, address: "SYSTEM:echo hello")
            let relay = try scene.startRelay(pods: ["web": namespace], connector: connector)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort, closedPort, greeterPort])
            let echo = try forwarder.local(echoPort)
            let baseline = (relay: relay.child.openSockets(), forwarder: forwarder.child.openSockets())

            for round in 0..<8 {
                let payload = Net.randomBytes(64 * 1024 + round)
                #expect(Net.same(try Net.echo("127.0.0.1", echo, payload), payload), "round \(round): echo")
                #expect(Net.same(try Net.echo("127.0.0.1", echo, payload, halfClose: true), payload), "round \(round): half-closed echo")

                // The client resets in the middle of a transfer.
                let reset = try Net.connect("127.0.0.1", echo)
                _ = Net.writeWhileAccepted(reset, seconds: 0.05)
                resetClose(reset)

                // The client connects and goes away at once.
                close(try Net.connect("127.0.0.1", echo))

                // A refused pod port.
                let refused = try Net.connect("127.0.0.1", try forwarder.local(closedPort))
                #expect(["eof", "reset"].contains(Net.readUntilClosed(refused, timeout: 15).outcome), "round \(round): refused port")
                close(refused)

                // The pod answers and closes first; the client reads the answer and closes.
                // (Whether the pod's FIN reaches the client is `podClosesFirst`'s business.)
                let greeter = try Net.connect("127.0.0.1", try forwarder.local(greeterPort))
                let greeting = try Net.read(greeter, count: 6, timeout: 15)
                close(greeter)
                #expect(greeting == Array("hello\n".utf8), "round \(round)")
            }

            // Everything settles back to the idle state.
            let deadline = Date().addingTimeInterval(15)
            var state = ""
            var settled = false
            while Date() < deadline {
                let relaySockets = relay.child.openSockets()
                let forwarderSockets = forwarder.child.openSockets()
                let podSide = try scene.podConnections(namespace)
                let children = relay.child.children()
                state = "relay sockets \(relaySockets) (idle: \(baseline.relay)), forwarder sockets \(forwarderSockets) (idle: \(baseline.forwarder)), "
                    + "pod connections \(podSide), relay's child processes \(children)"
                if relaySockets == baseline.relay && forwarderSockets == baseline.forwarder && podSide.isEmpty && children.isEmpty {
                    settled = true
                    break
                }
                usleep(100_000)
            }
            #expect(settled, "not back to idle after 15 s: \(state)")

            let payload = Net.randomBytes(100_000)
            #expect(Net.same(try Net.echo("127.0.0.1", echo, payload), payload), "echo after the rounds")
            #expect(relay.child.isRunning && forwarder.child.isRunning)
        }
    }

    @Test("The pod answers and closes first: the client gets the answer, then end of file",
          arguments: ConnectorKind.allCases, CopyChoice.allCases)
    func podClosesFirst(_ connector: ConnectorKind, _ copy: CopyChoice) throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: greeterPort, address: "SYSTEM:echo hello")
            let relay = try scene.startRelay(pods: ["web": namespace], connector: connector, copy: copy)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [greeterPort], copy: copy)
            // The client sends nothing and keeps its side open: only the pod's FIN can end the read.
            let fd = try Net.connect("127.0.0.1", try forwarder.local(greeterPort))
            defer { close(fd) }
            let greeting = Net.readUntilClosed(fd, timeout: 5)
            #expect(greeting.bytes == 6, "\(greeting)")
            #expect(greeting.outcome == "eof", "the pod closed its side; the client got: \(greeting)")
            #expect(relay.child.isRunning && forwarder.child.isRunning)
            copy.expectUsed(relay: relay, forwarder: forwarder, connector: connector)
        }
    }

    /// Flow control must stall a stream whose reader stopped, and nothing else: however many
    /// streams are stalled, a new stream on the same session still flows. (Each stalled stream
    /// holds up to one stream window, 2 MiB, of unconsumed DATA; if the connection-level window
    /// is only opened as bytes are written, some 32 stalled streams exhaust the 64 MiB
    /// connection window and stop every stream of the session.)
    @Test("Streams whose pod stopped reading stall only themselves, however many", arguments: ConnectorKind.allCases)
    func manyStalledStreams(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            // Small TCP buffers in the pod's namespace, so that little sits in the kernel. (Not
            // smaller: two socat processes with blocking writes, as the nsenter connector makes,
            // deadlock on an echo larger than the buffers between them.)
            _ = try E2E.run(["ip", "netns", "exec", namespace.name, "sysctl", "-q", "-w",
                             "net.ipv4.tcp_rmem=4096 65536 65536", "net.ipv4.tcp_wmem=4096 65536 65536"],
                            timeout: 10, directory: scene.directory)
            try scene.serve(in: namespace, port: echoPort)
            try scene.serve(in: namespace, port: sinkPort, address: "SYSTEM:sleep 120")
            let relay = try scene.startRelay(pods: ["web": namespace], connector: connector)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [sinkPort, echoPort])
            let sink = try forwarder.local(sinkPort)
            let echo = try forwarder.local(echoPort)
            var stalled: [Int32] = []
            defer { for fd in stalled { close(fd) } }
            let payload = Net.randomBytes(32 * 1024)

            for count in 1...80 {
                let fd = try Net.connect("127.0.0.1", sink)
                stalled.append(fd)
                // 1.5 MiB: more than one stream window, so the stream is stalled for good.
                _ = Net.writeWhileAccepted(fd, seconds: 0.2, limit: 3 * mebibyte / 2)
                guard count == 1 || count % 20 == 0 else { continue }
                usleep(300_000)
                do {
                    let echoed = try Net.echo("127.0.0.1", echo, payload, timeout: 5)
                    #expect(Net.same(payload, echoed), "with \(count) stalled streams: \(Net.firstDifference(payload, echoed))")
                } catch {
                    Issue.record("with \(count) stalled streams on the session, a new stream does not flow: \(error)")
                    break
                }
            }
            #expect(relay.child.isRunning && forwarder.child.isRunning)
        }
    }

    @Test("A pod port that never accepts: 504 after the connect timeout", arguments: ConnectorKind.allCases)
    func connectTimeout(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            // backlog 0 and never accept: one connection fills the queue, later SYNs are dropped.
            let python = try #require(E2E.which("python3"), "python3 is needed for a listener that never accepts")
            let stuck = try scene.start(["ip", "netns", "exec", namespace.name, python, "-c",
                                         "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', \(stuckPort)))\n"
                                         + "s.listen(0)\ntime.sleep(120)\n"], name: "stuck")
            try scene.waitListening(in: namespace, port: stuckPort, child: stuck)
            let relay = try scene.startRelay(pods: ["web": namespace], connector: connector, extra: ["--connect-timeout", "1"])
            let url = "\(relay.url)/portForward/default/web"

            // The first connection fills the listener's queue (the relay is connected, no data flows).
            _ = try scene.start(["curl", "-sS", "--max-time", "60", "--http2-prior-knowledge", "-H", "port: \(stuckPort)",
                                 "--data-binary", "x", url], name: "filler")
            let deadline = Date().addingTimeInterval(10)
            while try scene.podConnections(namespace).filter({ $0.contains(":\(stuckPort)") }).isEmpty && Date() < deadline {
                usleep(50_000)
            }

            let started = Date()
            let result = try E2E.run(["curl", "-sS", "--max-time", "20", "--http2-prior-knowledge", "-H", "port: \(stuckPort)",
                                      "--data-binary", "x", "-w", "\n%{http_code}", url], timeout: 30, directory: scene.directory)
            let elapsed = Date().timeIntervalSince(started)
            let lines = result.stdout.split(separator: "\n")
            #expect(lines.last == "504", "curl: \(result.stdout) \(result.stderr)")
            #expect(result.stdout.contains("timed out"), "\(result.stdout)")
            #expect(elapsed > 0.8 && elapsed < 6, "answered after \(elapsed) s with --connect-timeout 1")

            // The client: the connection is closed, one error line, and the forwarder goes on.
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [stuckPort, echoPort])
            let line = try forwarder.refusedLine(stuckPort)
            #expect(line.contains("timed out"), "\(line)")
            let payload = Net.randomBytes(10_000)
            #expect(Net.same(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload), payload))
        }
    }

    @Test("With --no-reconnect, when the relay goes away, the client says so, closes its connections and exits non-zero")
    func relayGone() throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: .native)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], extra: ["--no-reconnect"])
            let fd = try Net.connect("127.0.0.1", try forwarder.local(echoPort))
            defer { close(fd) }
            var flows = [Flow(fd: fd, payload: Array("ping".utf8))]
            try Net.exchange(&flows, timeout: 10)
            #expect(flows[0].received == Array("ping".utf8))
            kill(relay.child.pid, SIGKILL)
            let status = forwarder.child.wait(timeout: 10)
            #expect(status != nil && status != 0, "status \(String(describing: status))")
            #expect(forwarder.child.stderr.contains("lost connection to relay"), "\(forwarder.child.output)")
            #expect(["eof", "reset"].contains(Net.readUntilClosed(fd, timeout: 10).outcome))
        }
    }

    @Test("A relay on ::1, named by PORTFORWARD_SERVER")
    func ipv6RelayFromEnvironment() throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native, listen: "[::1]:0")
            #expect(relay.child.stdout.contains("Relay listening on [::1]:\(relay.port)"), "\(relay.child.stdout)")
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], serverFromEnvironment: true)
            let payload = Net.randomBytes(300_000)
            #expect(Net.same(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload), payload))
        }
    }

    @Test("A local port taken on both addresses ends the client with an error")
    func busyLocalPort() throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: .native)
            let v4 = try listenSocket("127.0.0.1", port: 0)
            defer { close(v4.fd) }
            let v6 = try listenSocket("::1", port: v4.port)
            defer { close(v6.fd) }
            let result = try E2E.run([E2E.binary, "forward", "--server", relay.url, "--io", E2E.io, "web", "\(v4.port):\(echoPort)"],
                                     timeout: 20, directory: scene.directory)
            #expect(result.status != 0)
            #expect(result.stderr.contains("unable to listen on port \(v4.port)"), "\(result.stderr)")
        }
    }

    @Test("Malformed port specifications are usage errors", arguments: [
        (["web", "70000"], "70000"),
        (["web", "a_b"], "\"a_b\""),
        (["web", "6000:http", "6000:7000"], "6000"),
        (["web", "1:2:3"], "1:2:3"),
        (["web", "5000", "5000:6000"], "5000"),
        (["web", "0"], "\"0\""),
        (["web", "--", "-1"], "-1"),
        (["web", "-1"], "Error"),
        (["web"], "port specification"),
    ])
    func usageErrors(_ arguments: [String], _ fragment: String) throws {
        try E2E.requireBinary()
        // A server nobody listens on: a spec that got past validation would fail differently.
        let result = try E2E.run([E2E.binary, "forward", "--server", "http://127.0.0.1:1", "--io", E2E.io] + arguments, timeout: 20)
        #expect(result.status != 0)
        #expect(result.stderr.contains(fragment), "\(result.stderr)")
        #expect(!result.stderr.contains("cannot reach relay"), "\(result.stderr)")
        #expect(!result.stdout.contains("Forwarding from"))
    }
}
