import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// The Kubernetes surface attacked: kubectl's SPDY/3.1 port-forward, plain and inside a WebSocket,
// driven by Tests/Peers/spdypeer.py (Python's socket and zlib, not our SPDY code). Each attack
// must be answered within a stated bound while a healthy port-forward keeps flowing.

enum SPDYPeer {
    static let script = E2E.packageRoot + "/Tests/Peers/spdypeer.py"

    static func command(_ mode: String, _ relay: RelayProcess, _ arguments: [String]) -> [String] {
        [Peers.python, script, mode, "127.0.0.1", "\(relay.port)"] + arguments
    }

    /// Runs a spdypeer mode to its end and returns its JSON line.
    static func run(_ mode: String, _ relay: RelayProcess, _ arguments: [String] = [], timeout: Double = 60) throws -> [String: Any] {
        let result = try E2E.run(command(mode, relay, arguments), timeout: timeout)
        guard let line = result.stdout.split(separator: "\n").last,
              let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw HarnessError("spdypeer \(mode) printed no result (status \(result.status))\n\(result.stdout)\n\(result.stderr)")
        }
        return object
    }

    /// A healthy port-forward through the relay: `bytes` echoed by the pod, within `timeout` s.
    static func healthy(_ relay: RelayProcess, ws: Bool = false, bytes: Int = 256 * 1024, timeout: Double = 5) throws {
        let start = Date()
        let result = try run("forward", relay, ["--bytes", "\(bytes)", "--timeout", "\(timeout)"] + (ws ? ["--ws"] : []),
                             timeout: timeout + 5)
        let seconds = Date().timeIntervalSince(start)
        #expect(result["intact"] as? Bool == true, "a healthy port-forward was not echoed intact: \(result)")
        #expect(seconds < timeout, "a healthy port-forward took \(seconds) s")
    }
}

@Suite("End to end: kubectl's port-forward protocols attacked", .serialized)
struct KubernetesHardeningTests {
    /// A relay with the pod `web` (default/web: an echo server on port 7000, and a port that never
    /// reads, `sinkPort`) and `extra` flags.
    private func relay(_ scene: Scene, extra: [String] = []) throws -> RelayProcess {
        try Peers.require()
        let namespace = try scene.makeNamespace()
        try scene.serve(in: namespace, port: echoPort)
        try scene.serve(in: namespace, port: sinkPort, address: "SYSTEM:sleep 3600")
        return try scene.startRelay(pods: ["web": namespace], connector: .native, extra: ["-v"] + extra)
    }

    @Test("The kubelet's own path (/portForward/NS/NAME) takes the same SPDY port-forward, plain and in a WebSocket",
          arguments: [false, true])
    func kubeletPath(_ ws: Bool) throws {
        try Peers.require()
        try withScene { scene in
            let relay = try relay(scene)
            let result = try SPDYPeer.run("forward", relay, ["--node-path", "--bytes", "\(4 << 20)"] + (ws ? ["--ws"] : []))
            #expect(result["intact"] as? Bool == true, "\(result)")
            #expect(relay.child.stderr.contains("port-forward from 127.0.0.1: SPDY/3.1\(ws ? " in a WebSocket" : "") for pod default/web"),
                    "\(relay.child.stderr)")
        }
    }

    @Test("An upload to a pod that never reads stops at the stream's bound (SPDY has no flow control); other forwards flow",
          arguments: [false, true])
    func uploadToStalledPod(_ ws: Bool) throws {
        try Peers.require()
        try withScene { scene in
            let relay = try relay(scene)
            let before = try relay.child.residentBytes()
            let upload = try scene.start(SPDYPeer.command("upload", relay, ["--target-port", "\(sinkPort)", "--seconds", "6"]
                                                          + (ws ? ["--ws"] : [])), name: "spdypeer-upload")
            Thread.sleep(forTimeInterval: 3)
            // Another forward on another connection goes on meanwhile.
            try SPDYPeer.healthy(relay, ws: ws)
            _ = upload.wait(timeout: 15)
            let result = upload.stdout
            let grown = try relay.child.residentBytes() - before
            // The stream's bound is 2 MiB of unwritten bytes, the pod socket's buffers take some
            // more; far from the hundreds of MiB the client offered.
            #expect(grown < 24 * mebibyte, "RSS grew by \(grown / mebibyte) MiB; \(result)")
            #expect(result.contains("\"stalled\": true"), "the upload was never held back: \(result)")
            #expect(relay.child.isRunning)
        }
    }

    @Test("Channel protocol: a silent client is PINGed and dropped; one that floods PINGs and never reads holds a bounded queue")
    func channelAttackers() throws {
        try Peers.require()
        try withScene { scene in
            let relay = try relay(scene, extra: ["--keepalive-interval", "1", "--keepalive-timeout", "1"])
            let script = E2E.packageRoot + "/Tests/Peers/channelpeer.py"
            let url = "ws://127.0.0.1:\(relay.port)/api/v1/namespaces/default/pods/web/portforward"
            let silent = try E2E.run([Peers.python, script, url, "v4.channel.k8s.io", "\(echoPort)", "silent"], timeout: 40)
            let seconds = silent.stdout.split(separator: " ").last.flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 99
            #expect(seconds < 6, "\(silent)")
            #expect(relay.child.stderr.contains("no answer to PING within 1 s"), "\(relay.child.stderr)")

            let before = try relay.child.residentBytes()
            let flood = try E2E.run([Peers.python, script, url, "v4.channel.k8s.io", "\(echoPort)", "pingflood"], timeout: 40)
            let grown = try relay.child.residentBytes() - before
            #expect(flood.stdout.contains("stalled True") || flood.stdout.contains("closed"), "\(flood)")
            // The 4 MiB output bound, buffers in flight, and on io_uring its provided-buffer ring
            // (16 MiB, never trimmed), which becomes resident under load.
            let bound = (E2E.io == "uring" ? 40 : 24) << 20
            #expect(grown < bound, "RSS grew by \(grown / mebibyte) MiB: \(flood)")
            try SPDYPeer.healthy(relay)
            #expect(relay.child.isRunning)
        }
    }

    @Test("SPDY pairs wait for the same stream-open buckets as h2 streams: 100 at once at 50/s take about 2 s")
    func pairsAreRateLimited() throws {
        try Peers.require()
        try withScene { scene in
            let relay = try relay(scene, extra: ["--stream-open-rate", "50", "--stream-open-burst", "5"])
            let result = try SPDYPeer.run("pairs", relay, ["--count", "100", "--timeout", "20"], timeout: 40)
            let seconds = result["seconds"] as? Double ?? 0
            #expect(result["echoed"] as? Int == 100, "\(result)")
            // 95 tokens after the burst, at 50 a second: 1.9 s; unpaced, 100 connects take milliseconds.
            #expect(seconds > 1.5 && seconds < 10, "\(result)")
        }
    }

    @Test("A client that floods PINGs (and frames that earn RST_STREAMs) and never reads holds a bounded queue; others flow")
    func controlFloodWithoutReading() throws {
        try withScene { scene in
            let relay = try relay(scene)
            try SPDYPeer.healthy(relay)
            let idle = try relay.child.residentBytes()
            // Each PING is echoed and each DATA frame for a stream never opened earns an
            // RST_STREAM: frames the relay must send a peer that reads nothing.
            let flooders = [
                try scene.start(SPDYPeer.command("pingflood", relay, ["--seconds", "12"]), name: "pingflood"),
                try scene.start(SPDYPeer.command("rstflood", relay, ["--seconds", "12"]), name: "rstflood"),
                try scene.start(SPDYPeer.command("pingflood", relay, ["--seconds", "12", "--ws"]), name: "pingflood-ws"),
            ]
            Thread.sleep(forTimeInterval: 9)
            let flooded = try relay.child.residentBytes()
            // Before: the echoes gathered in the session's output while a write waited, about
            // 6 MB a second per flooder, without bound (70 MiB here after 9 s; now about 17).
            // io_uring's provided-buffer ring (16 MiB, never trimmed) becomes resident under load.
            let bound = (E2E.io == "uring" ? 48 : 32) << 20
            #expect(flooded - idle < bound, "resident memory grew by \((flooded - idle) >> 20) MiB under the floods")
            try SPDYPeer.healthy(relay)
            try SPDYPeer.healthy(relay, ws: true)
            for flooder in flooders { _ = flooder.wait(timeout: 15) }
            #expect(relay.child.isRunning, "the relay died\n\(relay.child.output)")
            try SPDYPeer.healthy(relay)
        }
    }

    @Test("16,000 error streams that never get their data stream do not stall another client's port-forward")
    func synStreamFlood() throws {
        try withScene { scene in
            let relay = try relay(scene)
            let flood = try scene.start(SPDYPeer.command("synflood", relay, ["--count", "16000", "--seconds", "5", "--timeout", "60"]),
                                        name: "synflood")
            Thread.sleep(forTimeInterval: 1)
            // Before: each SYN_STREAM scanned every waiting pair for the next deadline, and
            // inflated its header block a byte at a time; the reactor was busy for tens of
            // seconds, and this port-forward timed out.
            try SPDYPeer.healthy(relay, timeout: 5)
            try SPDYPeer.healthy(relay, ws: true, timeout: 5)
            let result = try flood.waitFor("the flood's result", timeout: 60) { text -> String? in
                text.split(separator: "\n").first { $0.hasPrefix("{") }.map(String.init)
            }
            #expect(result.contains("\"replies\": 16000"), "every lone error stream gets its SYN_REPLY: \(result)")
            #expect(relay.child.isRunning)
        }
    }

    @Test("A client that upgrades and goes silent is PINGed and dropped; one without streams is dropped when idle")
    func silentClient() throws {
        try withScene { scene in
            let relay = try relay(scene, extra: ["--keepalive-interval", "1", "--keepalive-timeout", "1"])
            // Without the pods' namespace descriptors, which the relay keeps open once a stream used them.
            let baseline = relay.child.openFilesBesidesNamespaces()
            for ws in [false, true] {
                // Before: no keepalive on SPDY sessions: never dropped (a vanished kubectl held its
                // connection and its streams until TCP noticed, if ever).
                let silent = try SPDYPeer.run("silent", relay, ["--seconds", "10"] + (ws ? ["--ws"] : []), timeout: 20)
                let after = silent["closed_after"] as? Double
                #expect(after != nil && after! <= 5, "a silent client\(ws ? " in a WebSocket" : "") was not dropped: \(silent)")
                #expect((silent["pings"] as? Int ?? 0) >= 1, "the relay PINGs a silent client: \(silent)")
            }
            try SPDYPeer.healthy(relay)
            #expect(relay.child.openFilesBesidesNamespaces() == baseline, "descriptors left behind")
            _ = try relay.child.waitFor("one line for the dropped session") { $0.contains("no answer to PING within 1 s") ? true : nil }

            let idle = try self.relay(scene, extra: ["--keepalive-interval", "0", "--idle-timeout", "1"])
            let silent = try SPDYPeer.run("silent", idle, ["--seconds", "10"], timeout: 20)
            let after = silent["closed_after"] as? Double
            #expect(after != nil && after! <= 4, "a session without streams outlived --idle-timeout: \(silent)")
            _ = try idle.child.waitFor("one line for the idle session") { $0.contains("idle timeout") ? true : nil }
        }
    }
}
