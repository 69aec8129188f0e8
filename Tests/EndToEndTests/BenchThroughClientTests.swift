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
    /// The token the relay accepts (in `kubeconfig`).
    let token: String
    let ca: String

    init(_ scene: Scene) throws {
        let files = try TLSFiles(in: scene.directory)
        let token = "bench-\(E2E.randomSuffix())-secret"
        let tokens = try scene.write("\(token),alice,1001\n", to: "tokens.csv")
        let (namespace, relay) = try scene.tlsRelay(files, extra: ["--token-auth-file", tokens])
        let target = try scene.start(["ip", "netns", "exec", namespace.name, E2E.binary, "bench", "--serve", "all",
                                      "--port", "\(targetEcho)", "--io", E2E.io], name: "target")
        try scene.waitListening(in: namespace, port: targetSource, child: target)
        self.relay = relay
        self.token = token
        ca = files.ca
        kubeconfig = try scene.tlsKubeconfig(relay, ca: files.ca, token: token)
    }

    /// The bench's arguments for `scenario` through this pod's forward client, speaking `wire`.
    func arguments(_ scenario: String, _ wire: WireChoice, json: String, pod: String = "pod/web",
                   kubeconfig: String? = nil) -> [String] {
        [scenario, pod, "--kubeconfig", kubeconfig ?? self.kubeconfig, "--port", "\(targetEcho)", "--discard-port", "\(targetDiscard)",
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

/// The arguments of a process, from /proc/PID/cmdline.
private func commandLine(_ pid: pid_t) -> [String] {
    let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
    return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
}

extension Scene {
    /// A bench run left going (its temporary files in the scene's directory, no ~/.kube/config),
    /// and its forward child once that is listening.
    fileprivate func startBench(_ arguments: [String], kubeconfig: String) throws -> (bench: Child, client: pid_t) {
        let bench = try start(["env", "-u", "KUBECONFIG", "HOME=\(directory)", "TMPDIR=\(directory)", E2E.binary, "bench",
                               "--io", E2E.io] + arguments, name: "bench")
        let client = try bench.waitFor("the forward client, listening") { _ -> pid_t? in
            forwardProcesses(using: kubeconfig).first.flatMap { pid in
                bench.children().contains { $0.pid == "\(pid)" } ? pid : nil
            }
        }
        return (bench, client)
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

    @Test("An unknown pod: exit 1, one line with the client's error (none of its -v lines), and no client left")
    func unknownPod() throws {
        try withScene { scene in
            let pod = try BenchPod(scene)
            let json = "\(scene.directory)/none.json"
            let run = try scene.runClient(pod.arguments("throughput", .h2, json: json, pod: "pod/nope") + ["-t", "0.5"],
                                          environment: ["TMPDIR": scene.directory], timeout: 60, subcommand: "bench")
            #expect(run.status == 1, "\(run.stderr)")
            let lines = run.stderr.split(separator: "\n")
            #expect(lines.count == 1, "one line: \(run.stderr)")
            let line = lines.first.map(String.init) ?? ""
            #expect(line.hasPrefix("error: portforward forward exited (exit status 1) before it listened: "), "\(run.stderr)")
            #expect(line.contains("\"nope\" not found"), "\(run.stderr)")
            for verbose in ["io: ", "copy: ", "session to ", "Forwarding from"] { #expect(!line.contains(verbose), "\(run.stderr)") }
            #expect(access(json, F_OK) != 0, "no results for a run that did not run")
            #expect(forwardProcesses(using: pod.kubeconfig).isEmpty)
            let left = (try? FileManager.default.contentsOfDirectory(atPath: scene.directory)) ?? []
            #expect(!left.contains { $0.hasPrefix("pf-bench-forward-") }, "the child's log went: \(left)")
        }
    }

    @Test("The relay killed mid-run: exit 1, the error line says what the client saw, and its log stays")
    func relayLost() throws {
        try withScene { scene in
            let pod = try BenchPod(scene)
            let (bench, _) = try scene.startBench(pod.arguments("throughput", .h2, json: "\(scene.directory)/x.json") + ["-t", "30"],
                                                  kubeconfig: pod.kubeconfig)
            usleep(500_000)
            kill(pod.relay.child.pid, SIGKILL)
            #expect(bench.wait(timeout: 15) == 1, "\(bench.output)")
            let lines = bench.stderr.split(separator: "\n")
            #expect(lines.count == 1, "one line: \(bench.stderr)")
            let line = lines.first.map(String.init) ?? ""
            #expect(line.hasPrefix("error: "), "\(bench.stderr)")
            #expect(line.contains("portforward forward said: ") && line.contains("Lost connection to relay at \(pod.relay.url)"),
                    "the client's reason: \(bench.stderr)")
            let log = line.components(separatedBy: "(its log: ").last.map { String($0.dropLast()) } ?? ""
            #expect(log.hasPrefix(scene.directory + "/pf-bench-forward-") && log.hasSuffix("/forward.log"), "\(bench.stderr)")
            let kept = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            #expect(kept.contains("Lost connection to relay"), "the log stays: \(kept)")
            #expect(forwardProcesses(using: pod.kubeconfig).isEmpty, "the forward client outlived the bench")
        }
    }

    @Test("The bench killed with SIGKILL mid-run: its forward client ends within seconds")
    func benchKilled() throws {
        try withScene { scene in
            let pod = try BenchPod(scene)
            let (bench, client) = try scene.startBench(pod.arguments("throughput", .websocket, json: "\(scene.directory)/x.json")
                                                       + ["-t", "30"], kubeconfig: pod.kubeconfig)
            #expect(commandLine(client).contains("--exit-with-parent"), "\(commandLine(client))")
            usleep(500_000)
            kill(bench.pid, SIGKILL)  // the bench alone, not its process group
            _ = bench.wait(timeout: 5)
            let deadline = Date().addingTimeInterval(3)
            while forwardProcesses(using: pod.kubeconfig).contains(client) && Date() < deadline { usleep(50_000) }
            #expect(!forwardProcesses(using: pod.kubeconfig).contains(client), "the forward client outlived a killed bench")
        }
    }

    @Test("forward --exit-with-parent PID, PID not its parent: it exits at once")
    func parentAlreadyGone() throws {
        try withScene { scene in
            let run = try scene.runClient(["--exit-with-parent", "1", "--server", "http://127.0.0.1:1", "web", ":7"], timeout: 10)
            #expect(run.status == 1, "\(run.stderr)")
            #expect(run.stderr.contains("has ended (--exit-with-parent)"), "\(run.stderr)")
        }
    }

    @Test("--token reaches the client in a file of mode 0600, not on its command line; it wins over the kubeconfig's token; the file goes")
    func tokenInFile() throws {
        try withScene { scene in
            let pod = try BenchPod(scene)
            // The kubeconfig's token is wrong: only --token authenticates.
            let wrong = try scene.tlsKubeconfig(pod.relay, ca: pod.ca, token: "wrong-token", name: "wrong")
            let json = "\(scene.directory)/token.json"
            let (bench, client) = try scene.startBench(pod.arguments("rr", .h2, json: json, kubeconfig: wrong)
                                                       + ["--token", pod.token, "-t", "1", "--warmup", "0.2"], kubeconfig: wrong)
            let arguments = commandLine(client)
            #expect(!arguments.isEmpty && !arguments.contains { $0.contains(pod.token) }, "the token on the command line: \(arguments)")
            let file = arguments.firstIndex(of: "--token-file").flatMap { arguments.indices.contains($0 + 1) ? arguments[$0 + 1] : nil }
            #expect(file != nil, "\(arguments)")
            if let file {
                var status = stat()
                #expect(stat(file, &status) == 0 && status.st_mode & 0o777 == 0o600, "mode \(String(status.st_mode, radix: 8))")
                var parent = stat()
                let directory = String(file[..<(file.lastIndex(of: "/") ?? file.endIndex)])
                #expect(stat(directory, &parent) == 0 && parent.st_mode & 0o777 == 0o700, "\(directory)")
            }
            #expect(bench.wait(timeout: 30) == 0, "authenticated with --token: \(bench.output)")
            #expect(try BenchFile(json).number("round_trips") > 0)
            if let file { #expect(access(file, F_OK) != 0, "the token file outlived the run") }
            let left = (try? FileManager.default.contentsOfDirectory(atPath: scene.directory)) ?? []
            #expect(!left.contains { $0.hasPrefix("pf-bench-forward-") }, "\(left)")
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
              (["--spawn-pod", "--keepalive-interval", "5"], "--spawn-pod starts its own relay and speaks h2c to it: leave out --keepalive-interval"),
              (["--server", "http://127.0.0.1:1", "--pod", "default/web", "--port", "7", "--upgrade-timeout", "3", "--tls-cipher-suites", "x"],
               "--upgrade-timeout, --tls-cipher-suites go with a pod argument"),
          ])
    func mixed(_ arguments: [String], _ message: String) throws {
        try E2E.requireBinary()
        let run = try E2E.run([E2E.binary, "bench", "throughput"] + arguments, timeout: 10)
        #expect(run.status == 64, "\(run.stderr)")
        let line = run.stderr.split(separator: "\n").first.map(String.init) ?? ""
        #expect(line.hasPrefix("Error: \(message)"), "\(run.stderr)")
    }
}
