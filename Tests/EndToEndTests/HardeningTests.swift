import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// What an attacker does to a relay or a client, each case answered clearly and within a bound,
// with everything else still flowing (the hardening issue). Peers: raw sockets, Tests/Peers/h2peer.py
// (the `h2` library) and Tests/Peers/fakerelay.py.

private let upgradeLine = "POST /portForward/default/web HTTP/1.1\r\n"
private let upgradeFields = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nport: 7000\r\n"

extension EndToEndTests {
    /// A relay with an echo pod `web` on port 7000 and `extra` flags.
    private func hardenedRelay(_ scene: Scene, extra: [String] = []) throws -> (PodNamespace, RelayProcess) {
        let namespace = try scene.makeNamespace()
        try scene.serve(in: namespace, port: echoPort)
        return (namespace, try scene.startRelay(pods: ["web": namespace], connector: .native, extra: extra))
    }

    /// h2peer's flood-data: `count` streams sending to the pod's port that never reads (7003).
    private func floodSink(_ scene: Scene, _ relay: RelayProcess, count: Int, bytes: Int? = nil, seconds: Int,
                           hold: Int) throws -> Child {
        try scene.start([Peers.python, Peers.h2peer, "flood-data", "127.0.0.1", "\(relay.port)", "--target-port", "\(sinkPort)",
                         "--count", "\(count)", "--seconds", "\(seconds)", "--hold", "\(hold)"]
                        + (bytes.map { ["--bytes", "\($0)"] } ?? []), name: "flood")
    }

    /// Waits until a flood has sent what the relay would take (its first result line).
    private func waitSent(_ flood: Child) throws {
        _ = try flood.waitFor("the flood to be sent", timeout: 30) { $0.contains("\"sent\"") ? true : nil }
    }

    /// The relay still forwards: a fresh client's echo comes back.
    private func stillForwards(_ scene: Scene, _ relay: RelayProcess) throws {
        #expect(relay.child.isRunning, "the relay died\n\(relay.child.output)")
        let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort])
        let payload = Net.randomBytes(64 * 1024)
        let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, timeout: 20)
        #expect(Net.same(payload, echoed))
        forwarder.child.kill()
    }

    @Test("Malformed and oversized upgrade requests get their status and nothing is upgraded; the relay lives")
    func hostileUpgradeHeads() throws {
        try withScene { scene in
            let (_, relay) = try hardenedRelay(scene)
            let host = "Host: relay\r\n"
            let cases: [(String, String, Int)] = [
                ("Content-Length: -1 (crashed the relay)", upgradeLine + host + upgradeFields + "Content-Length: -1\r\n\r\n", 400),
                ("missing Host", upgradeLine + upgradeFields + "\r\n", 400),
                ("Content-Length: abc", upgradeLine + host + upgradeFields + "Content-Length: abc\r\n\r\n", 400),
                ("20 digits", upgradeLine + host + upgradeFields + "Content-Length: 12345678901234567890\r\n\r\n", 400),
                ("conflicting lengths", upgradeLine + host + upgradeFields + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
                ("60 KiB head in one write", upgradeLine + host + upgradeFields + "X-Pad: \(String(repeating: "a", count: 60 * 1024))\r\n\r\n", 431),
                ("body over the stream window", upgradeLine + host + upgradeFields + "Content-Length: 16777216\r\n\r\n", 413),
                // RFC 7540 section 3.2: an Upgrade not listed in Connection is not for this hop.
                ("Upgrade without Connection", upgradeLine + host
                    + "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nport: 7000\r\n\r\n", 426),
                ("Connection without HTTP2-Settings", upgradeLine + host
                    + "Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nport: 7000\r\n\r\n", 426),
                ("HTTP2-Settings nghttp2 refuses", upgradeLine + host
                    + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAM\r\nport: 7000\r\n\r\n", 400),
            ]
            for (why, request, expected) in cases {
                let answer = try rawStatus(relay, Array(request.utf8))
                #expect(answer.status == expected, "\(why): \(answer.text.prefix(200))")
                #expect(!answer.text.contains("101 Switching"), "\(why) was upgraded")
                #expect(relay.child.isRunning, "\(why) killed the relay\n\(relay.child.output)")
            }
            // The refused upgrades leave no session behind: only the listener is open.
            usleep(300_000)
            #expect(relay.child.openSockets() == 1, "sockets left: \(relay.child.openSockets())")
            try stillForwards(scene, relay)
        }
    }

    @Test("-v logs each refused request in one line, at most 20 a second, and counts the rest")
    func verboseLogIsRateLimited() throws {
        try withScene { scene in
            let (_, relay) = try hardenedRelay(scene, extra: ["-v"])
            let bad = Array((upgradeLine + upgradeFields + "\r\n").utf8)  // no Host
            for _ in 0..<60 { _ = try rawStatus(relay, bad, timeout: 5) }
            usleep(1_100_000)
            _ = try rawStatus(relay, bad, timeout: 5)
            usleep(200_000)
            let lines = relay.child.stderr.split(separator: "\n").filter { $0.contains("refused with 400: missing Host header") }
            #expect(lines.count >= 2 && lines.count <= 41, "\(lines.count) lines")
            #expect(relay.child.stderr.contains("more log lines suppressed)"), "\(relay.child.stderr)")
        }
    }

    @Test("The relay advertises finite limits; past MAX_CONCURRENT_STREAMS a client gets GOAWAY, past --max-streams 503")
    func streamLimits() throws {
        try withScene { scene in
            try Peers.require()
            let (_, relay) = try hardenedRelay(scene)
            let settings = try #require(try Peers.h2("settings", relay)["settings"] as? [String: Int])
            #expect(settings["3"] == 16_384, "MAX_CONCURRENT_STREAMS \(settings)")
            #expect(settings["6"] == 65_536, "MAX_HEADER_LIST_SIZE \(settings)")

            let (_, small) = try hardenedRelay(scene, extra: ["--max-streams-per-connection", "50", "--max-streams", "70"])
            let fifty = try Peers.h2("open", small, ["--count", "50"])
            #expect((fifty["counts"] as? [String: Int])?["200"] == 50, "\(fifty)")
            // One more than advertised is a protocol error (nghttp2 answers GOAWAY PROTOCOL_ERROR).
            let over = try Peers.h2("open", small, ["--count", "51"])
            #expect(over["goaway"] as? Int == 1, "\(over)")
            // Across connections, --max-streams answers 503 past 70 (the first client's streams
            // are closed by now: this one holds its 50 while a second asks for 30).
            let holder = try scene.start([Peers.python, Peers.h2peer, "open", "127.0.0.1", "\(small.port)", "--count", "50",
                                          "--hold", "10"], name: "holder")
            _ = try holder.waitFor("50 streams answered") { $0.contains("\"200\": 50") ? true : nil }
            let second = try Peers.h2("open", small, ["--count", "30"])
            let secondCounts = try #require(second["counts"] as? [String: Int])
            #expect(secondCounts["200"] == 20 && secondCounts["503"] == 10, "\(second)")
        }
    }

    @Test("An HPACK bomb gets 431 at a bounded cost; the relay lives")
    func hpackBomb() throws {
        try withScene { scene in
            try Peers.require()
            let (_, relay) = try hardenedRelay(scene)
            let before = try relay.child.residentBytes()
            let started = Date()
            let result = try Peers.h2("bomb", relay)
            let frames = try #require(result["frames"] as? [[String: Any]])
            // HEADERS with :status 431 (HPACK: 0x3f... is the literal; check the body text instead).
            #expect(frames.contains { ($0["type"] as? Int) == 0 && (($0["payload"] as? String) ?? "").hasPrefix("686561646572206c697374") },
                    "expected the 431 body \"header list ...\": \(result)")
            let grown = try relay.child.residentBytes() - before
            #expect(grown < 32 * mebibyte, "RSS grew by \(grown / mebibyte) MiB")
            #expect(Date().timeIntervalSince(started) < 5)
            try stillForwards(scene, relay)
        }
    }

    @Test("Trailers end the upload: the pod gets its end of file and the stream is answered once")
    func trailers() throws {
        try withScene { scene in
            try Peers.require()
            let (_, relay) = try hardenedRelay(scene)
            let result = try Peers.h2("trailers", relay)
            #expect(result["status"] as? Int == 200, "\(result)")
            #expect(result["body"] as? String == "hello through trailers\n", "\(result)")
            #expect(result["ended"] as? Bool == true, "\(result)")
            #expect(result["reset"] is NSNull, "\(result)")
        }
    }

    @Test("The port header: one plain decimal number 1-65535, or 400")
    func portHeader() throws {
        try withScene { scene in
            try Peers.require()
            let (_, relay) = try hardenedRelay(scene)
            let result = try Peers.h2("port", relay, ["--ports", "7000", "+7000", "07000", "7000|7000", "-", "0", "65536", "7e3"])
            let statuses = try #require(result["results"] as? [[String: Any]]).map { $0["status"] as? Int }
            #expect(statuses == [200, 400, 400, 400, 400, 400, 400, 400], "\(result)")
        }
    }

    @Test("Past --max-connections a new connection is closed at once; the others go on")
    func maxConnections() throws {
        try withScene { scene in
            let (_, relay) = try hardenedRelay(scene, extra: ["--max-connections", "4"])
            let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0]
            var held: [Int32] = []
            defer { for fd in held { close(fd) } }
            for _ in 0..<4 {
                let fd = try Net.connect("127.0.0.1", relay.port)
                _ = preface.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                held.append(fd)
            }
            usleep(200_000)
            let extra = try Net.connect("127.0.0.1", relay.port)
            defer { close(extra) }
            let outcome = Net.readUntilClosed(extra, timeout: 5)
            #expect(outcome.outcome == "eof" || outcome.outcome == "reset", "the fifth connection was not closed: \(outcome)")
            // One of the four goes away: a new client gets in.
            close(held.removeLast())
            usleep(200_000)
            try stillForwards(scene, relay)
        }
    }

    @Test("A silent client is dropped after its PING goes unanswered; an idle session after the idle timeout")
    func keepaliveAndIdle() throws {
        try withScene { scene in
            try Peers.require()
            let (_, relay) = try hardenedRelay(scene, extra: ["--keepalive-interval", "1", "--keepalive-timeout", "1",
                                                               "--idle-timeout", "2"])
            let silent = try Peers.h2("silent", relay, ["--timeout", "15"])
            #expect(silent["closed"] as? Bool == true, "\(silent)")
            #expect((silent["seconds"] as? Double ?? 99) < 5, "\(silent)")
            #expect((silent["pings"] as? Int ?? 0) >= 1, "\(silent)")
            let idle = try Peers.h2("idle", relay, ["--timeout", "15"])
            #expect(idle["goaway"] as? Int == 0, "\(idle)")
            let seconds = idle["seconds"] as? Double ?? 99
            #expect(seconds >= 1.5 && seconds < 6, "\(idle)")
        }
    }

    @Test("A stream whose pod never reads holds at most two pipes, however much is sent")
    func pipeQuota() throws {
        try withScene { scene in
            try Peers.require()
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            try scene.serve(in: namespace, port: sinkPort, address: "SYSTEM:sleep 3600")
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native, copy: .splice)
            let idle = relay.child.openFiles()
            try waitSent(try floodSink(scene, relay, count: 10, bytes: 16 * mebibyte, seconds: 8, hold: 10))
            let busy = relay.child.openFiles()
            // 10 pod sockets and per stream at most 2 queued pipes (4 descriptors), a few to spare
            // (measured: +49; before the fix +113 with 256 KiB frames, +1,707 in the issue's run).
            #expect(busy - idle <= 60, "descriptors went from \(idle) to \(busy)")
            try stillForwards(scene, relay)
        }
    }

    @Test("The held-bytes bound stops reading a connection whose pods do not read; others go on")
    func heldBytesBound() throws {
        try withScene { scene in
            try Peers.require()
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            try scene.serve(in: namespace, port: sinkPort, address: "SYSTEM:sleep 3600")
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native,
                                             extra: ["--max-held-bytes", "\(4 * mebibyte)", "--copy", "buffers"])
            let before = try relay.child.residentBytes()
            try waitSent(try floodSink(scene, relay, count: 30, seconds: 6, hold: 10))
            let grown = try relay.child.residentBytes() - before
            // 30 streams x 2 MiB windows would be 60 MiB; the bound keeps it near 4 MiB (+ buffers in
            // flight). On io_uring the provided-buffer ring (16 MiB of pool buffers held for the
            // reactor's life) faults in as the kernel fills it: 4 MiB more room there (24.1 MiB was
            // seen once on a loaded machine).
            let ring = E2E.io == "uring" ? 4 * mebibyte : 0
            #expect(grown < 24 * mebibyte + ring, "RSS grew by \(grown / mebibyte) MiB")
            try stillForwards(scene, relay)
        }
    }

    @Test("After a burst the relay gives its memory back: RSS within 2x idle in 10 s")
    func memoryGivenBack() throws {
        try withScene { scene in
            try Peers.require()
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: sinkPort, address: "SYSTEM:sleep 3600")
            let relay = try scene.startRelay(pods: ["web": namespace], connector: .native, copy: .buffers)
            usleep(500_000)
            let idle = try relay.child.residentBytes()
            // 40 streams to a pod that never reads: the relay holds up to a window (2 MiB) each
            // in pooled buffers, then the client goes away and every stream with it.
            let flood = try floodSink(scene, relay, count: 40, bytes: 16 * mebibyte, seconds: 6, hold: 0)
            #expect(flood.wait(timeout: 30) == 0, "\(flood.output)")
            let peak = try relay.child.residentBytes()
            #expect(peak > 2 * idle, "the burst did not grow the relay (idle \(idle / 1024) KiB, peak \(peak / 1024) KiB)")
            var now = peak
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline && now > 2 * idle {
                usleep(250_000)
                now = try relay.child.residentBytes()
            }
            #expect(now <= 2 * idle, "idle \(idle / 1024) KiB, peak \(peak / 1024) KiB, after 10 s \(now / 1024) KiB")
        }
    }

    @Test("A flood of open-and-reset streams from other addresses does not starve a healthy client")
    func rapidReset() throws {
        try withScene { scene in
            try Peers.require()
            let (_, relay) = try hardenedRelay(scene)
            // The attackers are niced: on this 2-core machine they stand for clients on other hosts.
            var flooders: [Child] = []
            for source in ["127.0.0.2", "127.0.0.3"] {
                flooders.append(try scene.start(["nice", "-n", "19", Peers.python, Peers.h2peer, "rapid-reset", "127.0.0.1",
                                                 "\(relay.port)", "--seconds", "8", "--source", source], name: "flood-\(source)"))
            }
            usleep(1_000_000)
            let healthy = try Peers.h2("latency", relay, ["--seconds", "5", "--interval", "0.01", "--source", "127.0.0.1"])
            for flooder in flooders { _ = flooder.wait(timeout: 15) }
            #expect(healthy["failures"] as? Int == 0, "\(healthy)")
            #expect((healthy["count"] as? Int ?? 0) >= 50, "\(healthy)")
            // The figure for docs/PERFORMANCE.md comes from the release build; here, a loose bound
            // that the unfair relay (4.5 s) failed.
            #expect((healthy["p99_ms"] as? Double ?? 1e9) < 500, "\(healthy)")
            #expect(relay.child.isRunning)
        }
    }

    @Test("The client gives up on an answer that trickles, is garbage, or never ends, within its deadline")
    func clientUpgradeDeadline() throws {
        try withScene { scene in
            try Peers.require()
            for (mode, expected) in [("trickle", "did not answer the upgrade within 2 s"), ("garbage", "malformed head"),
                                     ("huge", "malformed head")] {
                let fake = try scene.start([Peers.python, Peers.fakeRelay, mode], name: "fake-\(mode)")
                let port = try fake.waitFor("listening") { text -> Int? in
                    text.split(separator: "\n").first { $0.hasPrefix("listening ") }.flatMap { Int($0.split(separator: " ")[1]) }
                }
                let started = Date()
                let client = try scene.start([E2E.binary, "forward", "--server", "http://127.0.0.1:\(port)", "--io", E2E.io,
                                              "--upgrade-timeout", "2", "web", ":7000"], name: "forward-\(mode)")
                let status = client.wait(timeout: 15)
                let elapsed = Date().timeIntervalSince(started)
                #expect(status == 1, "\(mode): \(client.output)")
                #expect(elapsed < 6, "\(mode): took \(elapsed) s")
                #expect(client.stderr.contains(expected), "\(mode): \(client.stderr)")
                fake.kill()
            }
        }
    }

    @Test("A relay that stops (SIGSTOP) ends the client's session with one line (--no-reconnect: and the client)")
    func clientNoticesStoppedRelay() throws {
        try withScene { scene in
            let (_, relay) = try hardenedRelay(scene)
            let reconnecting = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort],
                                                        extra: ["--keepalive-interval", "1", "--keepalive-timeout", "1"])
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort],
                                                     extra: ["--keepalive-interval", "1", "--keepalive-timeout", "1", "--no-reconnect"])
            kill(relay.child.pid, SIGSTOP)
            defer { kill(relay.child.pid, SIGCONT) }
            let status = forwarder.child.wait(timeout: 10)
            #expect(status == 1, "\(forwarder.child.output)")
            #expect(forwarder.child.stderr.contains("no answer to PING within 1 s"), "\(forwarder.child.stderr)")
            // Without --no-reconnect the session is lost, said in one line, and the client waits for the next.
            _ = try reconnecting.child.waitFor("the line saying the session is lost") { $0.contains("Lost connection to relay") ? true : nil }
            let lost = reconnecting.child.stderr.split(separator: "\n").filter { $0.hasPrefix("Lost connection to relay") }
            #expect(lost.count == 1 && lost[0].contains("no answer to PING within 1 s"), "\(reconnecting.child.stderr)")
            #expect(reconnecting.child.isRunning)
        }
    }
}
