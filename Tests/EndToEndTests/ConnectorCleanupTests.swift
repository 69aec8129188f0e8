import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// What a failed connect leaves behind in the relay: nothing. Descriptors come back to their count
// before the streams, socat processes are reaped (no zombies), and reaping never blocks the loop.

private let droppingPort = 7300   // a listener whose queue is full: SYNs to it are dropped

/// One request through curl (prior knowledge): the status and the body.
private func request(_ relay: RelayProcess, pod: String, port: Int, scene: Scene,
                     maxTime: Double = 10) throws -> (code: String, body: String, seconds: Double) {
    let started = Date()
    let result = try E2E.run(["curl", "-sS", "--max-time", "\(maxTime)", "--http2-prior-knowledge", "-H", "port: \(port)",
                              "--data-binary", "x", "-w", "\n%{http_code}", "\(relay.url)/portForward/default/\(pod)"],
                             timeout: maxTime + 10, directory: scene.directory)
    let seconds = Date().timeIntervalSince(started)
    var lines = result.stdout.components(separatedBy: "\n")
    let code = lines.removeLast()
    return (code, lines.joined(separator: "\n"), seconds)
}

/// The descriptor numbers a process holds.
private func descriptors(_ child: Child) -> Set<Int> {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child.pid)/fd")) ?? []
    return Set(entries.compactMap { Int($0) })
}

/// Waits until the process holds `count` descriptors (or the deadline); returns the last count.
private func settle(_ child: Child, to count: Int, timeout: Double = 5) -> Int {
    let deadline = Date().addingTimeInterval(timeout)
    var now = descriptors(child).count
    while now != count && Date() < deadline {
        usleep(50_000)
        now = descriptors(child).count
    }
    return now
}

/// Waits until the process has no children at all (socat killed or exited, and reaped); returns
/// those left, with their state (Z: a zombie).
private func childrenGone(_ child: Child, timeout: Double = 5) -> [(pid: String, state: String)] {
    let deadline = Date().addingTimeInterval(timeout)
    var left = child.children()
    while !left.isEmpty && Date() < deadline {
        usleep(50_000)
        left = child.children()
    }
    return left
}

/// A pod whose `droppingPort` drops SYNs: a listener with a backlog of 0 that never accepts,
/// its one queue slot taken by a connection from inside the namespace.
private func droppingPod(_ scene: Scene) throws -> PodNamespace {
    let namespace = try scene.makeNamespace()
    let python = try #require(E2E.which("python3"), "python3 is needed for a listener that never accepts")
    let stuck = try scene.start(["ip", "netns", "exec", namespace.name, python, "-c",
                                 "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', \(droppingPort)))\n"
                                 + "s.listen(0)\nc = socket.socket()\nc.connect(('127.0.0.1', \(droppingPort)))\n"
                                 + "time.sleep(300)\n"], name: "stuck")
    try scene.waitListening(in: namespace, port: droppingPort, child: stuck)
    // The filler connection must be queued before the relay's connects come.
    let deadline = Date().addingTimeInterval(10)
    while try scene.podConnections(namespace).filter({ $0.contains(":\(droppingPort)") }).isEmpty && Date() < deadline {
        usleep(50_000)
    }
    return namespace
}

@Suite("End to end: what a failed connect leaves in the relay", .serialized)
struct ConnectorCleanupTests {
    @Test("Connect timeouts: 504, the relay's descriptors back to their count, no socat left (not even a zombie)",
          arguments: ConnectorKind.allCases)
    func timeoutLeavesNothing(_ connector: ConnectorKind) throws {
        try withScene { scene in
            let namespace = try droppingPod(scene)
            let relay = try scene.startRelay(pods: ["web": namespace], connector: connector, extra: ["--connect-timeout", "0.5"])

            // One first, so that whatever the relay sets up once (pools, buffers) is there.
            let first = try request(relay, pod: "web", port: droppingPort, scene: scene)
            #expect(first.code == "504" && first.body == "timed out connecting to port \(droppingPort) after 0.5s\n", "\(first)")
            #expect(childrenGone(relay.child).isEmpty)
            let baseline = descriptors(relay.child)

            for _ in 1...5 {
                let answer = try request(relay, pod: "web", port: droppingPort, scene: scene)
                #expect(answer.code == "504" && answer.body == "timed out connecting to port \(droppingPort) after 0.5s\n",
                        "\(answer)")
                #expect(answer.seconds > 0.4 && answer.seconds < 5, "answered after \(answer.seconds) s")
            }
            let count = settle(relay.child, to: baseline.count)
            #expect(count == baseline.count,
                    "the relay held \(baseline.count) descriptors before 5 timeouts and \(count) after: \(descriptors(relay.child).subtracting(baseline).sorted()) are new")
            let left = childrenGone(relay.child)
            #expect(left.isEmpty, "children left: \(left)")
            #expect(relay.child.isRunning)
        }
    }

    @Test("pipe2 failing (out of descriptors) after socketpair: 502, and the socket pair is closed")
    func pipeFailureLeaksNothing() throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: .nsenter)
            let warm = try request(relay, pod: "web", port: echoPort, scene: scene)
            #expect(warm.code == "200" && warm.body == "x", "\(warm)")
            #expect(childrenGone(relay.child).isEmpty)
            let held = descriptors(relay.child)

            // A descriptor limit that leaves 4 numbers free: the accepted connection takes one,
            // the socket pair two (the netns check opens and closes one before it), and pipe2,
            // which needs two, fails.
            var limit = 0
            var free = 0
            while free < 4 {
                if !held.contains(limit) { free += 1 }
                limit += 1
            }
            // The soft limit only: raising a hard limit again takes a privilege a container may lack.
            let original = try E2E.run(["prlimit", "--pid", "\(relay.child.pid)", "--nofile", "--output", "SOFT", "--noheadings"],
                                       timeout: 10).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let lowered = try E2E.run(["prlimit", "--pid", "\(relay.child.pid)", "--nofile=\(limit):"], timeout: 10)
            try #require(lowered.status == 0, "prlimit: \(lowered.stderr)")

            for _ in 1...3 {
                let answer = try request(relay, pod: "web", port: echoPort, scene: scene)
                #expect(answer.code == "502" && answer.body == "pipe2: too many open files\n", "\(answer)")
            }
            let count = settle(relay.child, to: held.count)
            #expect(count == held.count,
                    "the relay held \(held.count) descriptors before and \(count) after: \(descriptors(relay.child).subtracting(held).sorted()) are new")
            #expect(childrenGone(relay.child).isEmpty)

            // With room again, the same pod is reachable.
            let restored = try E2E.run(["prlimit", "--pid", "\(relay.child.pid)", "--nofile=\(original):"], timeout: 10)
            try #require(restored.status == 0, "prlimit --nofile=\(original): \(restored.stderr)")
            let after = try request(relay, pod: "web", port: echoPort, scene: scene)
            #expect(after.code == "200" && after.body == "x", "\(after)")
        }
    }

    @Test("socat that closes its standard error and lingers: reaped without blocking the relay")
    func reapDoesNotBlock() throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            // A socat that says nothing, closes its standard error, and exits 3 s later: the
            // relay must answer at once and go on serving, and reap it when it exits.
            let bin = "\(scene.directory)/bin"
            guard mkdir(bin, 0o755) == 0 else { throw HarnessError("mkdir \(bin) failed") }
            try "#!/bin/sh\nexec 2>&-\nsleep 3\n".write(toFile: "\(bin)/socat", atomically: true, encoding: .utf8)
            guard chmod("\(bin)/socat", 0o755) == 0 else { throw HarnessError("chmod failed") }
            let file = "\(scene.directory)/pods.yaml"
            try "pods:\n  - {namespace: default, name: web, netns: \(namespace.path)}\n"
                .write(toFile: file, atomically: true, encoding: .utf8)
            let path = "\(bin):" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
            let child = try scene.start(["env", "PATH=\(path)", E2E.binary, "relay", "--listen", "127.0.0.1:0",
                                         "--node", scene.node, "--pods", file, "--connector", "nsenter", "--io", E2E.io],
                                        name: "relay")
            let port = try child.waitFor("the line \"Relay listening on ...\"") { text -> Int? in
                guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Relay listening on ") }) else { return nil }
                return line.dropFirst("Relay listening on ".count).prefix { $0 != " " }.split(separator: ":").last.flatMap { Int($0) }
            }
            let relay = RelayProcess(child: child, host: "127.0.0.1", port: port)

            let refused = try request(relay, pod: "web", port: echoPort, scene: scene)
            #expect(refused.code == "502" && refused.body == "socat exited before connecting\n", "\(refused)")
            #expect(refused.seconds < 1.5, "answered after \(refused.seconds) s: the relay waited for socat's exit")
            // While that socat lingers, the relay answers others at once.
            let other = try request(relay, pod: "nosuchpod", port: echoPort, scene: scene)
            #expect(other.code == "404" && other.seconds < 1.5, "\(other)")

            let lingering = relay.child.children()
            #expect(!lingering.isEmpty, "the fake socat should still be running")
            let left = childrenGone(relay.child, timeout: 8)
            #expect(left.isEmpty, "children left after the fake socat exited: \(left)")
            #expect(relay.child.isRunning)
        }
    }
}
