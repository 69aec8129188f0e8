import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// `portforward bench` with a pod argument (issue 12): the bench starts `portforward forward` with
// the kubeconfig and --protocol given, and runs its scenarios as plain TCP through it. Here
// against our relay over https with a token, as a user's kubeconfig would reach an API server.

/// The ports of the bench's own target server in the pod (`bench --serve all`).
private let targetEcho = 7100, targetDiscard = 7101, targetSource = 7102

/// A pod running the bench's target server, a TLS relay that checks a token, and a kubeconfig
/// (https, CA, token) for it.
private struct BenchPod {
    let relay: RelayProcess
    let kubeconfig: String

    init(_ scene: Scene) throws {
        let files = try TLSFiles(in: scene.directory)
        let token = "bench-\(E2E.randomSuffix())-secret"
        let tokens = try scene.write("\(token),alice,1001\n", to: "tokens.csv")
        let (namespace, relay) = try scene.tlsRelay(files, extra: ["--token-auth-file", tokens])
        let target = try scene.start(["ip", "netns", "exec", namespace.name, E2E.binary, "bench", "--serve", "all",
                                      "--port", "\(targetEcho)", "--io", E2E.io], name: "target")
        try scene.waitListening(in: namespace, port: targetSource, child: target)
        self.relay = relay
        kubeconfig = try scene.tlsKubeconfig(relay, ca: files.ca, token: token)
    }

    /// The bench's arguments for `scenario` through this pod's forward client, speaking `wire`.
    func arguments(_ scenario: String, _ wire: WireChoice, json: String, pod: String = "pod/web") -> [String] {
        [scenario, pod, "--kubeconfig", kubeconfig, "--port", "\(targetEcho)", "--discard-port", "\(targetDiscard)",
         "--source-port", "\(targetSource)", "-q", "--json", json] + wire.arguments
    }
}

/// The results file of a bench run: its figures and its setup.
private struct BenchFile {
    let results: [String: Any]
    let setup: [String: Any]

    init(_ path: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let document = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        results = try #require(document["results"] as? [String: Any])
        setup = try #require(document["setup"] as? [String: Any])
    }

    func number(_ name: String) -> Double { (results[name] as? NSNumber)?.doubleValue ?? -1 }

    /// The setup names the forward client, the protocol asked for and the one its session spoke.
    func expectPath(_ wire: WireChoice, relay: RelayProcess) {
        #expect(setup["client"] as? String == "portforward forward")
        #expect(setup["protocol"] as? String == wire.rawValue, "\(setup)")
        #expect(setup["protocol_spoken"] as? String == wire.name, "\(setup)")
        #expect(setup["server"] as? String == relay.url, "\(setup)")
        #expect(setup["forward_sessions"] as? Int == 1, "one session for the whole run: \(setup)")
    }
}

/// The `portforward forward` processes that use `kubeconfig` (a path only this scene has), by pid,
/// zombies left out.
private func forwardProcesses(using kubeconfig: String) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> pid_t? in
        guard let pid = pid_t(entry),
              let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
        let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard arguments.count > 1, arguments[1] == "forward", arguments.contains(kubeconfig) else { return nil }
        let state = (try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8))?
            .split(separator: ")").last?.split(separator: " ").first
        return state == "Z" ? nil : pid
    }
}

@Suite("End to end: portforward bench through a portforward forward child, over each protocol", .serialized)
struct BenchThroughClientTests {
    @Test("throughput, rr and connrate through the client: exit 0, positive figures, the protocol named; no child left",
          arguments: WireChoice.allCases)
    func scenarios(_ wire: WireChoice) throws {
        try withScene { scene in
            let pod = try BenchPod(scene)
            let json = "\(scene.directory)/bench.json"
            let runs: [(String, [String], [String])] = [
                ("throughput", ["-t", "0.5", "--warmup", "0.2"], ["upload_gbps", "download_gbps", "total_gbps"]),
                ("rr", ["-t", "0.5", "--warmup", "0.2", "-s", "2"], ["round_trips", "round_trips_per_s"]),
                ("connrate", ["-t", "0.5", "--warmup", "0.2", "-P", "4"], ["connections", "connections_per_s"]),
            ]
            for (scenario, extra, figures) in runs {
                unlink(json)
                let run = try scene.runClient(pod.arguments(scenario, wire, json: json) + extra, timeout: 60, subcommand: "bench")
                #expect(run.status == 0, "\(scenario): \(run.stderr)")
                let file = try BenchFile(json)
                for figure in figures { #expect(file.number(figure) > 0, "\(scenario) \(figure): \(file.results)") }
                file.expectPath(wire, relay: pod.relay)
                #expect(forwardProcesses(using: pod.kubeconfig).isEmpty, "a forward client outlived the bench (\(scenario))")
            }
        }
    }

    @Test("fanout of 200 connections through the client: every one verified, held, closed cleanly; then churn",
          arguments: WireChoice.allCases)
    func fanout(_ wire: WireChoice) throws {
        try withScene { scene in
            let pod = try BenchPod(scene)
            let json = "\(scene.directory)/fanout.json"
            let run = try scene.runClient(pod.arguments("fanout", wire, json: json, pod: "web")
                                          + ["-s", "200", "-P", "50", "--hold", "0.2", "-t", "0.5"], timeout: 60, subcommand: "bench")
            #expect(run.status == 0, "\(run.stderr)")
            let file = try BenchFile(json)
            for figure in ["streams_verified", "streams_held", "streams_closed_cleanly"] {
                #expect(file.number(figure) == 200, "\(figure): \(file.results)")
            }
            #expect(file.number("churn_cycles") > 0 && file.number("churn_failed") == 0, "\(file.results)")
            file.expectPath(wire, relay: pod.relay)
        }
    }

    @Test("An unknown pod: exit 1, the client's own line, and no client left")
    func unknownPod() throws {
        try withScene { scene in
            let pod = try BenchPod(scene)
            let json = "\(scene.directory)/none.json"
            let run = try scene.runClient(pod.arguments("throughput", .h2, json: json, pod: "pod/nope") + ["-t", "0.5"],
                                          timeout: 60, subcommand: "bench")
            #expect(run.status == 1, "\(run.stderr)")
            let line = run.stderr.split(separator: "\n").first { $0.hasPrefix("forward: error:") }
            #expect(line?.contains("\"nope\" not found") == true, "\(run.stderr)")
            #expect(run.stderr.contains("error: portforward forward exited (exit status 1) before it listened"), "\(run.stderr)")
            #expect(access(json, F_OK) != 0, "no results for a run that did not run")
            #expect(forwardProcesses(using: pod.kubeconfig).isEmpty)
        }
    }

    @Test("Interrupted mid-run: the bench stops its client (SIGTERM) and exits 1")
    func interrupted() throws {
        try withScene { scene in
            let pod = try BenchPod(scene)
            let bench = try scene.start([E2E.binary, "bench", "--io", E2E.io]
                                        + pod.arguments("throughput", .websocket, json: "\(scene.directory)/x.json") + ["-t", "30"],
                                        name: "bench")
            let client = try bench.waitFor("the forward client, listening") { _ -> pid_t? in
                forwardProcesses(using: pod.kubeconfig).first.flatMap { pid in
                    bench.children().contains { $0.pid == "\(pid)" } ? pid : nil
                }
            }
            usleep(500_000)
            kill(bench.pid, SIGINT)
            #expect(bench.wait(timeout: 10) == 1, "\(bench.output)")
            #expect(bench.stderr.contains("error: interrupted"), "\(bench.stderr)")
            #expect(!forwardProcesses(using: pod.kubeconfig).contains(client), "the forward client outlived the bench")
        }
    }
}

@Suite("portforward bench: its client paths are not mixed")
struct BenchPathArgumentTests {
    @Test("A pod argument with the h2c or --spawn-pod options, or client options without a pod: one line, status 64",
          arguments: [
              (["web", "--server", "http://127.0.0.1:1", "--pod", "default/web", "--port", "7"], "--pod NAMESPACE/NAME is a pod on a relay"),
              (["--spawn-pod", "--kubeconfig", "/nonexistent"], "--spawn-pod starts its own relay and speaks h2c to it: leave out --kubeconfig"),
              (["web", "--spawn-pod", "--port", "7"], "--spawn-pod starts its own relay and speaks h2c to it: leave out a pod argument"),
              (["pod/web"], "a pod argument needs --port N (the pod's echo port)"),
              (["web", "--port", "7", "-c", "2"], "--connections counts HTTP/2 connections to a relay"),
              (["--protocol", "spdy", "--port", "7"], "--protocol goes with a pod argument (NAME or pod/NAME)"),
              (["--pod", "default/web", "--port", "7"], "--pod NAMESPACE/NAME needs --server URL"),
          ])
    func mixed(_ arguments: [String], _ message: String) throws {
        try E2E.requireBinary()
        let run = try E2E.run([E2E.binary, "bench", "throughput"] + arguments, timeout: 10)
        #expect(run.status == 64, "\(run.stderr)")
        let line = run.stderr.split(separator: "\n").first.map(String.init) ?? ""
        #expect(line.hasPrefix("Error: \(message)"), "\(run.stderr)")
    }
}
