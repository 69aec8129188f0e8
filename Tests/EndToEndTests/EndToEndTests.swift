import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// Relay and client as real processes (`.build/debug/portforward`, with `--io $PORTFORWARD_IO`),
// pods as network namespaces running socat, and the relay-based tests once per connector.
// Ports inside a pod's namespace are its own, so the pod ports are fixed:
let echoPort = 7000      // socat ... EXEC:cat
let closedPort = 7001    // nothing listens
let zeroPort = 7002      // socat ... OPEN:/dev/zero: sends endlessly
let sinkPort = 7003      // socat ... SYSTEM:sleep: never reads

let mebibyte = 1 << 20

@Suite("End to end: relay, client and pods in network namespaces", .serialized)
struct EndToEndTests {
    @Test("64 MiB in both directions arrive intact", arguments: ConnectorKind.allCases, CopyChoice.allCases)
    func bulk(_ connector: ConnectorKind, _ copy: CopyChoice) throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: connector, copy: copy)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], copy: copy)
            let payload = Net.randomBytes(64 * mebibyte)
            // Sent and received at once: the echo comes back while the rest is still going out.
            let received = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, timeout: 90)
            #expect(Net.same(payload, received), "\(Net.firstDifference(payload, received))")
            #expect(relay.child.isRunning && forwarder.child.isRunning)
            copy.expectUsed(relay: relay, forwarder: forwarder, connector: connector)
        }
    }

    @Test("100 concurrent connections each arrive intact", arguments: ConnectorKind.allCases, CopyChoice.allCases)
    func concurrent(_ connector: ConnectorKind, _ copy: CopyChoice) throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: connector, copy: copy)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], copy: copy)
            let port = try forwarder.local(echoPort)
            try Net.expectConcurrentEchoes(port, count: 100, size: 48 * 1024, step: 331, timeout: 90)
            let handled = try forwarder.child.waitFor("100 \"Handling connection\" lines", timeout: 10) { text -> Int? in
                // The local port, as kubectl prints it.
                let count = text.components(separatedBy: "Handling connection for \(port)\n").count - 1
                return count >= 100 ? count : nil
            }
            #expect(handled == 100)
            #expect(relay.child.isRunning && forwarder.child.isRunning)
            copy.expectUsed(relay: relay, forwarder: forwarder, connector: connector)
        }
    }

    @Test("A half-closed connection still gets the whole answer", arguments: ConnectorKind.allCases, CopyChoice.allCases)
    func halfClose(_ connector: ConnectorKind, _ copy: CopyChoice) throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            // Answers only once its input has ended: the digest of everything it read.
            try scene.serve(in: namespace, port: 7004, address: "EXEC:sha256sum")
            let relay = try scene.startRelay(pods: ["web": namespace], connector: connector, copy: copy)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort, 7004], copy: copy)

            try scene.expectHalfClosedAnswers(forwarder, digestPort: 7004)
            copy.expectUsed(relay: relay, forwarder: forwarder, connector: connector)
        }
    }

    @Test("A refused pod port closes that connection, prints one error line, and the forwarder goes on",
          arguments: ConnectorKind.allCases)
    func refusedPort(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: connector)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort, closedPort])

            let line = try forwarder.refusedLine(closedPort)
            #expect(line.lowercased().contains("refused"), "\(line)")
            usleep(300_000)
            let lines = (forwarder.child.stdout + forwarder.child.stderr).split(separator: "\n").filter { $0.contains("error:") }
            #expect(lines.count == 1, "error lines: \(lines)")

            #expect(forwarder.child.isRunning, "the forwarder ended: \(forwarder.child.output)")
            let payload = Net.randomBytes(256 * 1024)
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload)
            #expect(Net.same(payload, echoed), "\(Net.firstDifference(payload, echoed))")
            // And the refused port itself is still served (refused again, not gone).
            let again = try Net.connect("127.0.0.1", try forwarder.local(closedPort))
            #expect(["eof", "reset"].contains(Net.readUntilClosed(again, timeout: 15).outcome))
            close(again)
            #expect(forwarder.child.isRunning && relay.child.isRunning)
        }
    }

    @Test("An unknown pod ends the client at start with a non-zero status", arguments: ConnectorKind.allCases)
    func unknownPod(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: connector)
            let result = try E2E.run([E2E.binary, "forward", "--server", relay.url, "--io", E2E.io, "nosuchpod", "1234"],
                                     timeout: 20, directory: scene.directory)
            #expect(result.status != 0)
            let lines = (result.stdout + result.stderr).split(separator: "\n")
            #expect(lines.contains { $0.contains("pod \"default/nosuchpod\" not found") }, "output: \(lines)")
            #expect(!lines.contains { $0.hasPrefix("Forwarding from") })
            #expect(relay.child.isRunning)
        }
    }

    @Test("The ::1 listener works", arguments: ConnectorKind.allCases)
    func ipv6Listener(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: connector)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort])
            let port = try forwarder.local(echoPort)
            // The chosen port is the same on both addresses.
            #expect(forwarder.lines.contains("Forwarding from [::1]:\(port) -> \(echoPort)"), "\(forwarder.lines)")
            #expect(forwarder.lines.contains("Forwarding from 127.0.0.1:\(port) -> \(echoPort)"), "\(forwarder.lines)")
            let payload = Net.randomBytes(512 * 1024)
            let echoed = try Net.echo("::1", port, payload)
            #expect(Net.same(payload, echoed), "\(Net.firstDifference(payload, echoed))")
        }
    }

    /// A stalled reader must not grow memory beyond the stream window.
    /// The bound asserted: RSS growth < 16 MiB for the relay and for the forwarder, while ~2 s of
    /// endless data meets a reader that does not read. Per stream, each side holds at most one
    /// stream window (2 MiB, docs/PROTOCOL.md) of received DATA, plus a few 128 KiB pool buffers
    /// and nghttp2's bookkeeping; the kernel's socket buffers are not in RSS. A side that acked
    /// DATA before writing it would buffer hundreds of MiB in 2 s.
    @Test("A reader that stops reading does not grow the relay's or the client's memory", arguments: ConnectorKind.allCases)
    func stalledReader(_ connector: ConnectorKind) throws {
        let bound = 16 * mebibyte
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: zeroPort, address: "OPEN:/dev/zero")
            try scene.serve(in: namespace, port: sinkPort, address: "SYSTEM:sleep 60")
            let relay = try scene.startRelay(pods: ["web": namespace], connector: connector)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [zeroPort, sinkPort])
            let processes = [("relay", relay.child), ("forwarder", forwarder.child)]

            /// The largest growth of each process's RSS over `baseline` while `seconds` pass.
            func growth(over baseline: [Int], for seconds: Double) throws -> [Int] {
                var peak = baseline
                let end = Date().addingTimeInterval(seconds)
                while Date() < end {
                    usleep(200_000)
                    for (index, process) in processes.enumerated() { peak[index] = max(peak[index], try process.1.residentBytes()) }
                }
                return zip(peak, baseline).map { $0 - $1 }
            }

            // Warm up: the pools and the session's tables reach their working size.
            let warm = try Net.connect("127.0.0.1", try forwarder.local(zeroPort))
            let first = try Net.read(warm, count: 8 * mebibyte, timeout: 30)
            close(warm)
            let zeros = [UInt8](repeating: 0, count: 8 * mebibyte)
            #expect(Net.same(first, zeros))
            usleep(300_000)

            // The pod sends endlessly; the client connects and does not read.
            var baseline = try processes.map { try $0.1.residentBytes() }
            let stalled = try Net.connect("127.0.0.1", try forwarder.local(zeroPort))
            defer { close(stalled) }
            var grown = try growth(over: baseline, for: 2)
            for (index, process) in processes.enumerated() {
                #expect(grown[index] < bound, "\(process.0) grew by \(grown[index] / 1024) KiB (bound \(bound / 1024) KiB) behind a reader that stopped")
            }
            // The stream was alive all along: it delivers once read.
            let later = try Net.read(stalled, count: 8 * mebibyte, timeout: 30)
            #expect(Net.same(later, zeros))

            // The other way: the client sends endlessly; the pod does not read.
            baseline = try processes.map { try $0.1.residentBytes() }
            let writer = try Net.connect("127.0.0.1", try forwarder.local(sinkPort))
            defer { close(writer) }
            let accepted = Net.writeWhileAccepted(writer, seconds: 2)
            grown = try growth(over: baseline, for: 0.5)
            for (index, process) in processes.enumerated() {
                #expect(grown[index] < bound, "\(process.0) grew by \(grown[index] / 1024) KiB (bound \(bound / 1024) KiB) in front of a pod that stopped reading")
            }
            // Back-pressure reached the client: only buffers' worth was taken, not 2 s of sending.
            #expect(accepted < 64 * mebibyte, "the path took \(accepted / mebibyte) MiB from a client whose pod does not read")
            #expect(accepted > 0)
            #expect(relay.child.isRunning && forwarder.child.isRunning)
        }
    }

    @Test("Independent HTTP/2 peers: curl (prior knowledge and Upgrade) and nghttp -u", arguments: ConnectorKind.allCases)
    func independentPeers(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: connector)
            let url = "\(relay.url)/portForward/default/web"
            let input = "\(scene.directory)/input"
            let output = "\(scene.directory)/output"
            let payload = Net.randomBytes(mebibyte)
            try Data(payload).write(to: URL(fileURLWithPath: input))

            func curl(_ arguments: [String]) throws -> (code: String, body: String) {
                unlink(output)
                let result = try E2E.run(["curl", "-sS", "--max-time", "20", "-o", output, "-w", "%{http_code}"] + arguments,
                                         timeout: 30, directory: scene.directory)
                let body = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
                #expect(result.status == 0, "curl \(arguments): \(result.stderr)")
                return (result.stdout, body)
            }
            func outputBytes() -> [UInt8] { (try? Data(contentsOf: URL(fileURLWithPath: output))).map { [UInt8]($0) } ?? [] }

            // Prior knowledge: the body goes to the pod's port, the echo comes back.
            var answer = try curl(["--http2-prior-knowledge", "-H", "port: \(echoPort)", "--data-binary", "@\(input)", url])
            #expect(answer.code == "200")
            var echoed = outputBytes()
            #expect(Net.same(payload, echoed), "prior knowledge: \(Net.firstDifference(payload, echoed))")

            // The API server's path reaches the same pod.
            answer = try curl(["--http2-prior-knowledge", "-H", "port: \(echoPort)", "--data-binary", "@\(input)",
                               "\(relay.url)/proxy/nodes/\(scene.node)/portForward/default/web"])
            #expect(answer.code == "200")
            echoed = outputBytes()
            #expect(Net.same(payload, echoed), "API server path: \(Net.firstDifference(payload, echoed))")

            // Bad port headers: 400 with a one-line reason.
            for header in ["port: abc", "port: 70000", "port: 0", "port: -1"] {
                answer = try curl(["--http2-prior-knowledge", "-H", header, "--data-binary", "x", url])
                #expect(answer.code == "400", "\(header): \(answer)")
                #expect(answer.body.hasSuffix("\n") && answer.body.split(separator: "\n").count == 1, "\(header): \(answer.body)")
            }
            answer = try curl(["--http2-prior-knowledge", "--data-binary", "x", url])
            #expect(answer.code == "400", "no port header: \(answer)")

            // A refused port: 502, with the reason.
            answer = try curl(["--http2-prior-knowledge", "-H", "port: \(closedPort)", "--data-binary", "x", url])
            #expect(answer.code == "502", "\(answer)")
            #expect(answer.body.lowercased().contains("refused"), "\(answer.body)")

            // Unknown pod or node: 404.
            answer = try curl(["--http2-prior-knowledge", "-H", "port: \(echoPort)", "--data-binary", "x",
                               "\(relay.url)/portForward/default/nosuchpod"])
            #expect(answer.code == "404", "\(answer)")
            #expect(answer.body.contains("pod \"default/nosuchpod\" not found"), "\(answer.body)")
            answer = try curl(["--http2-prior-knowledge", "-H", "port: \(echoPort)", "--data-binary", "x",
                               "\(relay.url)/proxy/nodes/othernode/portForward/default/web"])
            #expect(answer.code == "404", "\(answer)")

            // HTTP/1.1 Upgrade: h2c, with the body sent before the upgrade.
            let upgradeBody = Array(payload.prefix(200 * 1024))
            try Data(upgradeBody).write(to: URL(fileURLWithPath: input + ".small"))
            answer = try curl(["--http2", "-H", "port: \(echoPort)", "--data-binary", "@\(input).small", url])
            #expect(answer.code == "200", "\(answer.code)")
            echoed = outputBytes()
            #expect(Net.same(upgradeBody, echoed), "curl --http2: \(Net.firstDifference(upgradeBody, echoed))")
            // The relay refuses an unknown pod before the upgrade.
            answer = try curl(["--http2", "-H", "port: \(echoPort)", "--data-binary", "x", "\(relay.url)/portForward/default/nosuchpod"])
            #expect(answer.code == "404", "\(answer)")

            // nghttp -u: the upgrade, then the request body over HTTP/2.
            let text = (0..<2000).map { "line \($0) of the nghttp body\n" }.joined()
            try text.write(toFile: input + ".txt", atomically: true, encoding: .utf8)
            let nghttp = try E2E.run(["nghttp", "-u", "-t", "20", "-H", "port: \(echoPort)", "-d", input + ".txt", url],
                                     timeout: 30, directory: scene.directory)
            #expect(nghttp.status == 0, "nghttp: \(nghttp.stderr)")
            #expect(nghttp.stdout.contains(text), "nghttp printed \(nghttp.stdout.utf8.count) bytes: \(nghttp.stdout.prefix(200))")

            #expect(relay.child.isRunning)
        }
    }

    @Test("The client through the API server's path, and an unknown node", arguments: ConnectorKind.allCases)
    func apiServerPath(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: connector)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort],
                                                     extra: ["--node", scene.node, "-n", "default"])
            let payload = Net.randomBytes(128 * 1024)
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload)
            #expect(Net.same(payload, echoed), "\(Net.firstDifference(payload, echoed))")

            let result = try E2E.run([E2E.binary, "forward", "--server", relay.url, "--io", E2E.io, "--node", "othernode", "web", "1234"],
                                     timeout: 20, directory: scene.directory)
            #expect(result.status != 0)
            #expect((result.stdout + result.stderr).contains("node \"othernode\" not found"), "\(result.stderr)")
        }
    }

    @Test("SIGTERM ends the client: its connections close, it exits 0, and the relay serves the next client")
    func sigterm() throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: .native)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort])
            let fd = try Net.connect("127.0.0.1", try forwarder.local(echoPort))
            defer { close(fd) }
            let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), Array("ping".utf8))
            #expect(echoed == Array("ping".utf8))
            kill(forwarder.child.pid, SIGTERM)
            let status = forwarder.child.wait(timeout: 10)
            #expect(status == 0, "exit status \(String(describing: status)): \(forwarder.child.output)")
            #expect(["eof", "reset"].contains(Net.readUntilClosed(fd, timeout: 10).outcome))

            let next = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort])
            let again = try Net.echo("127.0.0.1", try next.local(echoPort), Array("pong".utf8))
            #expect(again == Array("pong".utf8))
            #expect(relay.child.isRunning)
        }
    }

    @Test("A relay that cannot be reached ends the client at start with a non-zero status")
    func unreachableRelay() throws {
        try withScene { scene in
            // A port that was free a moment ago: bind, read it, close.
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                    bind(fd, pointer, length) == 0 ? getsockname(fd, pointer, &length) : -1
                }
            }
            let port = Int(UInt16(bigEndian: address.sin_port))
            close(fd)
            let result = try E2E.run([E2E.binary, "forward", "--server", "http://127.0.0.1:\(port)", "--io", E2E.io, "web", "1234"],
                                     timeout: 20, directory: scene.directory)
            #expect(result.status != 0)
            let lines = (result.stdout + result.stderr).split(separator: "\n")
            #expect(lines.count == 1 && lines[0].contains("cannot reach relay"), "\(lines)")
        }
    }
}
