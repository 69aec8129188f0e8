import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// The client as a drop-in for kubectl port-forward (issue 12): the kubeconfig as kubectl reads it,
// each kind of credential, kubectl's arguments, and a session that does not give up.

extension Scene {
    /// `portforward forward` with `arguments` (no --server unless given), `environment` set with
    /// env(1); returns once every remote port in `remotes` printed its 127.0.0.1 line.
    func startClient(_ arguments: [String], environment: [String: String] = [:], remotes: [Int]) throws -> ForwarderProcess {
        let env = ["env", "-u", "KUBECONFIG", "-u", "PORTFORWARD_SERVER", "HOME=\(directory)"]
            + environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let child = try start(env + [E2E.binary, "forward", "--io", E2E.io] + arguments, name: "forward")
        let lines = try child.waitFor("a \"Forwarding from\" line for every port") { text -> [String]? in
            let lines = text.split(separator: "\n").map(String.init).filter { $0.hasPrefix("Forwarding from 127.0.0.1:") }
            return remotes.allSatisfy { remote in lines.contains { $0.hasSuffix(" -> \(remote)") } } ? lines : nil
        }
        var ports: [Int: Int] = [:]
        for line in lines {
            let parts = line.dropFirst("Forwarding from 127.0.0.1:".count).components(separatedBy: " -> ")
            if parts.count == 2, let local = Int(parts[0]), let remote = Int(parts[1]) { ports[remote] = local }
        }
        return ForwarderProcess(child: child, localPorts: ports, lines: lines)
    }

    /// `portforward forward` (or another `subcommand`) expected to end by itself: its status,
    /// standard error and seconds.
    func runClient(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 30,
                   subcommand: String = "forward") throws -> (status: Int32, stderr: String, seconds: Double) {
        let env = ["env", "-u", "KUBECONFIG", "-u", "PORTFORWARD_SERVER", "HOME=\(directory)"]
            + environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let started = Date()
        let result = try E2E.run(env + [E2E.binary, subcommand, "--io", E2E.io] + arguments, timeout: timeout, directory: directory)
        return (result.status, result.stderr, Date().timeIntervalSince(started))
    }

    /// Kills `relay` under `forwarder` while a connection to pod port `remote` is open on it:
    /// the client says the session is lost, and that connection is reset (its bytes cannot be
    /// replayed on another session, so it is not ended as if the pod had closed it), with one line.
    func loseRelay(_ relay: RelayProcess, under forwarder: ForwarderProcess, remote: Int) throws {
        let open = try Net.connect("127.0.0.1", try forwarder.local(remote))
        defer { close(open) }
        var flows = [Flow(fd: open, payload: Array("ping".utf8))]
        try Net.exchange(&flows, timeout: 10)
        kill(relay.child.pid, SIGKILL)
        _ = relay.child.wait(timeout: 5)
        _ = try forwarder.child.waitFor("the line saying the session is lost") { $0.contains("Lost connection to relay") ? true : nil }
        let outcome = Net.readUntilClosed(open, timeout: 10).outcome
        #expect(outcome == "reset", "\(outcome)")
        let resets = forwarder.child.stderr.split(separator: "\n").filter { $0.contains("Connection for port \(remote) reset") }
        #expect(resets.count == 1, "\(forwarder.child.stderr)")
    }

    /// Through `forwarder`, a connection to the pod's echo port and one to `digestPort` (socat
    /// EXEC:sha256sum, which answers once its input ended), each half-closed after its payload:
    /// both answers arrive whole.
    func expectHalfClosedAnswers(_ forwarder: ForwarderProcess, digestPort: Int) throws {
        let payload = Net.randomBytes(mebibyte)
        let echoed = try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, halfClose: true, timeout: 60)
        #expect(Net.same(payload, echoed), "\(Net.firstDifference(payload, echoed))")
        let file = "\(directory)/payload"
        try Data(payload).write(to: URL(fileURLWithPath: file))
        let local = try E2E.run(["sha256sum", file], directory: directory)
        let expected = try #require(local.stdout.split(separator: " ").first.map(String.init))
        let answer = try Net.echo("127.0.0.1", try forwarder.local(digestPort), payload, halfClose: true, timeout: 60)
        #expect(String(decoding: answer, as: UTF8.self) == "\(expected)  -\n")
    }

    func write(_ text: String, to name: String) throws -> String {
        let path = "\(directory)/\(name)"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

/// Echoes `size` random bytes through `port` and says whether they came back intact.
private func echoes(_ port: Int, size: Int = 64 * 1024) throws -> Bool {
    let payload = Net.randomBytes(size)
    return Net.same(try Net.echo("127.0.0.1", port, payload, timeout: 20), payload)
}

private func base64(_ path: String) throws -> String {
    try Data(contentsOf: URL(fileURLWithPath: path)).base64EncodedString()
}

@Suite("End to end: the client as kubectl port-forward", .serialized)
struct ClientEndToEndTests {
    @Test("kubeconfig: KUBECONFIG merged (first file wins), the current context's namespace, --context, -n, pod/NAME and a named port")
    func kubeconfigSelection() throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let relay = try scene.startRelay(podsFile: """
                pods:
                  - {namespace: dev, name: web, netns: \(namespace.path), ports: [{name: echo, containerPort: \(echoPort)}]}
                  - {namespace: default, name: api, netns: \(namespace.path)}
                """, connector: .native)
            // The first file sets the current context and wins the cluster "relay" (a dead port in the second).
            let first = try scene.write("""
                apiVersion: v1
                kind: Config
                current-context: dev
                clusters:
                - {name: relay, cluster: {server: "\(relay.url)"}}
                contexts:
                - {name: dev, context: {cluster: relay, namespace: dev}}
                """, to: "first.yaml")
            let second = try scene.write("""
                apiVersion: v1
                kind: Config
                current-context: elsewhere
                clusters:
                - {name: relay, cluster: {server: "http://127.0.0.1:1"}}
                contexts:
                - {name: plain, context: {cluster: relay}}
                """, to: "second.yaml")
            let environment = ["KUBECONFIG": "\(first):\(second)"]
            // Namespace dev from the context; `echo` is the pod's container port 7000, forwarded
            // from a free local port.
            let forwarder = try scene.startClient(["pod/web", ":echo"], environment: environment, remotes: [echoPort])
            #expect(try echoes(try forwarder.local(echoPort)))
            forwarder.child.kill()
            // --context plain: no namespace in it, so default, where api lives.
            let other = try scene.startClient(["--context", "plain", "api", ":\(echoPort)"], environment: environment, remotes: [echoPort])
            #expect(try echoes(try other.local(echoPort)))
            other.child.kill()
            // -n wins over the context's namespace: web is not in default.
            let missing = try scene.runClient(["-n", "default", "pod/web", ":echo"], environment: environment)
            #expect(missing.status != 0 && missing.stderr.contains("\"default/web\" not found"), "\(missing)")
            // ~/.kube/config when KUBECONFIG is not set.
            mkdir("\(scene.directory)/.kube", 0o700)
            _ = try scene.write(try String(contentsOfFile: first, encoding: .utf8), to: ".kube/config")
            let home = try scene.startClient(["web", ":\(echoPort)"], remotes: [echoPort])
            #expect(try echoes(try home.local(echoPort)))
            home.child.kill()
            // --server overrides the cluster's server (kubectl's rule).
            let dead = try scene.write("""
                clusters:
                - {name: relay, cluster: {server: "http://127.0.0.1:1"}}
                contexts:
                - {name: dev, context: {cluster: relay, namespace: dev}}
                current-context: dev
                """, to: "dead.yaml")
            let overridden = try scene.startClient(["--kubeconfig", dead, "--server", relay.url, "web", ":\(echoPort)"], remotes: [echoPort])
            #expect(try echoes(try overridden.local(echoPort)))
        }
    }

    @Test("Arguments: svc/NAME and an unknown named port get one line; --pod-running-timeout waits for a pod that is not Running, then ends")
    func arguments() throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let relay = try scene.startRelay(podsFile: """
                pods:
                  - {namespace: default, name: web, netns: \(namespace.path), ports: [{name: echo, containerPort: \(echoPort)}]}
                  - {namespace: default, name: sleepy, netns: /run/netns/pf-e2e-absent-\(E2E.randomSuffix())}
                """, connector: .native)
            let service = try scene.runClient(["--server", relay.url, "svc/web", ":\(echoPort)"])
            let serviceLines = service.stderr.split(separator: "\n")
            #expect(service.status != 0 && serviceLines.count == 1 && serviceLines[0].contains("forwards to pods only"), "\(service)")
            let unnamed = try scene.runClient(["--server", relay.url, "web", ":nope"])
            #expect(unnamed.status != 0 && unnamed.stderr.contains("Pod 'web' does not have a named port 'nope'"), "\(unnamed)")
            let pending = try scene.runClient(["--server", relay.url, "--pod-running-timeout", "2s", "sleepy", ":\(echoPort)"])
            #expect(pending.status != 0, "\(pending)")
            #expect(pending.stderr.contains("unable to forward port because pod is not running. Current status=Pending"), "\(pending)")
            #expect(pending.seconds >= 2 && pending.seconds < 10, "\(pending)")
            let protocolLine = try scene.runClient(["--server", relay.url, "--protocol", "quic", "web", ":\(echoPort)"])
            #expect(protocolLine.status != 0 && protocolLine.stderr.contains("--protocol"), "\(protocolLine)")
        }
    }

    @Test("Credentials over https: token, tokenFile, CA file and data, insecure, a refused token; client certificate file and data")
    func credentials() throws {
        try withScene { scene in
            let files = try TLSFiles(in: scene.directory)
            let token = "tok-\(E2E.randomSuffix())-secret"
            let tokens = try scene.write("\(token),alice,1001\n", to: "tokens.csv")
            let (_, relay) = try scene.tlsRelay(files, extra: ["--token-auth-file", tokens])
            let tokenFile = try scene.write(token + "\n", to: "token")
            let caData = try base64(files.ca)
            func kubeconfig(_ name: String, cluster: String, user: String, server: String = relay.url) throws -> String {
                try scene.write("""
                    apiVersion: v1
                    kind: Config
                    current-context: c
                    clusters:
                    - name: relay
                      cluster: \(cluster.replacingOccurrences(of: "SERVER", with: server))
                    contexts:
                    - {name: c, context: {cluster: relay, user: u}}
                    users:
                    - name: u
                      user: \(user)
                    """, to: name)
            }
            let cases: [(String, String, String)] = [
                ("token + CA file", "{server: \"SERVER\", certificate-authority: \"\(files.ca)\"}", "{token: \"\(token)\"}"),
                ("tokenFile + CA data", "{server: \"SERVER\", certificate-authority-data: \"\(caData)\"}", "{tokenFile: \"\(tokenFile)\"}"),
                ("token + insecure", "{server: \"SERVER\", insecure-skip-tls-verify: true}", "{token: \"\(token)\"}"),
                ("token + CA data + tls-server-name", "{server: \"SERVER\", certificate-authority-data: \"\(caData)\", tls-server-name: localhost}",
                 "{token: \"\(token)\"}"),
            ]
            for (index, (name, cluster, user)) in cases.enumerated() {
                let path = try kubeconfig("kc-\(index)", cluster: cluster, user: user)
                let forwarder = try scene.startClient(["--kubeconfig", path, "web", ":echo"], remotes: [echoPort])
                #expect(try echoes(try forwarder.local(echoPort)), "\(name)")
                forwarder.child.kill()
            }
            // The token is checked: a wrong one ends the client with the server's word.
            let wrong = try kubeconfig("kc-wrong", cluster: "{server: \"SERVER\", certificate-authority: \"\(files.ca)\"}", user: "{token: wrong}")
            let refused = try scene.runClient(["--kubeconfig", wrong, "web", ":echo"])
            #expect(refused.status != 0 && refused.stderr.contains("Unauthorized") && !refused.stderr.contains("wrong"), "\(refused)")
            // The CA is checked: without it, the relay's certificate is refused.
            let noCA = try kubeconfig("kc-noca", cluster: "{server: \"SERVER\"}", user: "{token: \"\(token)\"}")
            let untrusted = try scene.runClient(["--kubeconfig", noCA, "web", ":echo"])
            #expect(untrusted.status != 0 && untrusted.stderr.contains("certificate was refused"), "\(untrusted)")

            // Client certificates, from files and from -data.
            let (_, mutual) = try scene.tlsRelay(files, clientCA: files.ca)
            let certificateCases = [
                "{client-certificate: \"\(files.clientCertificate)\", client-key: \"\(files.clientKey)\"}",
                "{client-certificate-data: \"\(try base64(files.clientCertificate))\", client-key-data: \"\(try base64(files.clientKey))\"}",
            ]
            for (index, user) in certificateCases.enumerated() {
                let path = try kubeconfig("kc-cert-\(index)", cluster: "{server: \"SERVER\", certificate-authority-data: \"\(caData)\"}",
                                          user: user, server: mutual.url)
                let forwarder = try scene.startClient(["--kubeconfig", path, "web", ":echo"], remotes: [echoPort])
                #expect(try echoes(try forwarder.local(echoPort)), "\(user.prefix(40))")
                forwarder.child.kill()
            }
            #expect(mutual.child.stderr.contains(#"client certificate of "alice""#), "\(mutual.child.stderr)")
        }
    }

    @Test("An exec plugin: run once while its token is valid, again once it expired; http:// gets no credentials and one line")
    func execPlugin() throws {
        try withScene { scene in
            let files = try TLSFiles(in: scene.directory)
            let token = "exec-\(E2E.randomSuffix())-secret"
            let tokens = try scene.write("\(token),alice,1001\n", to: "tokens.csv")
            let (namespace, relay) = try scene.tlsRelay(files, extra: ["--token-auth-file", tokens])
            let runs = "\(scene.directory)/runs"
            let plugin = try scene.write("""
                #!/bin/sh
                echo run >> \(runs)
                expiry=$(date -u -d '+4 seconds' +%Y-%m-%dT%H:%M:%SZ)
                printf '{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{"token":"%s","expirationTimestamp":"%s"}}' "\(token)" "$expiry"
                """, to: "plugin.sh")
            chmod(plugin, 0o755)
            let path = try scene.write("""
                apiVersion: v1
                kind: Config
                current-context: c
                clusters:
                - {name: relay, cluster: {server: "\(relay.url)", certificate-authority: "\(files.ca)"}}
                contexts:
                - {name: c, context: {cluster: relay, user: u}}
                users:
                - name: u
                  user:
                    exec: {apiVersion: client.authentication.k8s.io/v1, command: ./plugin.sh, interactiveMode: Never}
                """, to: "kubeconfig")
            func count() -> Int { ((try? String(contentsOfFile: runs, encoding: .utf8)) ?? "").split(separator: "\n").count }
            let forwarder = try scene.startClient(["--kubeconfig", path, "web", ":echo"], remotes: [echoPort])
            #expect(try echoes(try forwarder.local(echoPort)))
            #expect(try echoes(try forwarder.local(echoPort)))
            #expect(count() == 1, "runs while the token is valid: \(count())")
            sleep(5)
            #expect(try echoes(try forwarder.local(echoPort)))
            #expect(count() == 2, "runs after the token expired: \(count())")
            #expect(!forwarder.child.stderr.contains(token))

            // http://: a plain relay; the kubeconfig's token stays home, said in one line.
            let plain = try scene.startRelay(pods: ["web": namespace], connector: .native)
            let plainConfig = try scene.write("""
                clusters:
                - {name: relay, cluster: {server: "\(plain.url)"}}
                contexts:
                - {name: c, context: {cluster: relay, user: u}}
                current-context: c
                users:
                - {name: u, user: {token: "\(token)"}}
                """, to: "plain")
            let unsent = try scene.startClient(["--kubeconfig", plainConfig, "web", ":\(echoPort)"], remotes: [echoPort])
            #expect(try echoes(try unsent.local(echoPort)))
            let warnings = unsent.child.stderr.split(separator: "\n").filter { $0.contains("not sent to \(plain.url)") }
            #expect(warnings.count == 1 && warnings[0].contains("user \"u\""), "\(unsent.child.stderr)")
            #expect(!unsent.child.stderr.contains(token))
        }
    }

    @Test("Reconnect: the relay killed and started again; the listeners stay, a connection made meanwhile goes through, an open one is reset with one line; a pod gone ends the client")
    func reconnect() throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let pods = "pods:\n  - {namespace: default, name: web, netns: \(namespace.path)}\n"
            let relay = try scene.startRelay(podsFile: pods, connector: .native)
            let forwarder = try scene.startForwarder(relay: relay, pod: "pod/web", remotePorts: [echoPort],
                                                     extra: ["--pod-running-timeout", "3s"])
            let port = try forwarder.local(echoPort)
            try scene.loseRelay(relay, under: forwarder, remote: echoPort)
            let (during, early) = try Net.connectDuringOutage(port)
            defer { close(during) }
            #expect(forwarder.child.isRunning)

            // The pod recreated under the same name (another network namespace): it is used again.
            let recreated = try scene.makeNamespace()
            try scene.serve(in: recreated, port: echoPort)
            let restarted = try scene.startRelay(podsFile: "pods:\n  - {namespace: default, name: web, netns: \(recreated.path)}\n",
                                                 connector: .native, listen: "127.0.0.1:\(relay.port)")
            let back = Date()
            let answer = try Net.read(during, count: early.count, timeout: 10)
            #expect(answer == early, "the connection made during the outage: \(answer.count) bytes")
            #expect(try echoes(port))
            #expect(Date().timeIntervalSince(back) < 2, "\(Date().timeIntervalSince(back)) s after the restart")
            let lines = forwarder.child.stderr.split(separator: "\n")
            #expect(lines.filter { $0.contains("Lost connection") }.count == 1 && lines.filter { $0.contains("Reconnected") }.count == 1,
                    "\(forwarder.child.stderr)")

            // The pod is gone from the registry: after --pod-running-timeout the client ends, saying so.
            kill(restarted.child.pid, SIGKILL)
            _ = restarted.child.wait(timeout: 5)
            _ = try scene.startRelay(podsFile: "pods:\n  - {namespace: default, name: other, netns: \(recreated.path)}\n",
                                     connector: .native, listen: "127.0.0.1:\(relay.port)")
            let status = forwarder.child.wait(timeout: 15)
            #expect(status != nil && status != 0, "\(forwarder.child.output)")
            #expect(forwarder.child.stderr.contains("error: pod default/web is gone: pod \"default/web\" not found"), "\(forwarder.child.stderr)")
        }
    }

    @Test("A named port is looked up again at each re-dial: the pod back with the name on another port is forwarded there, with one line; a name the pod lost keeps its number, with one line")
    func namedPortFollowsThePod() throws {
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            let (first, second) = (echoPort + 11, echoPort + 12)
            try scene.serve(in: namespace, port: first, address: "SYSTEM:echo first")
            try scene.serve(in: namespace, port: second, address: "SYSTEM:echo second")
            func pods(_ port: Int?) -> String {
                "pods:\n  - {namespace: default, name: web, netns: \(namespace.path)\(port.map { ", ports: [{name: svc, containerPort: \($0)}]" } ?? "")}\n"
            }
            let relay = try scene.startRelay(podsFile: pods(first), connector: .native)
            let forwarder = try scene.start(["env", "-u", "KUBECONFIG", "-u", "PORTFORWARD_SERVER", "HOME=\(scene.directory)",
                                             E2E.binary, "forward", "--server", relay.url, "--io", E2E.io, "--address", "127.0.0.1",
                                             "web", ":svc"], name: "forward")
            let local = try forwarder.waitFor("the Forwarding line") { text -> Int? in
                guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Forwarding from 127.0.0.1:") }) else { return nil }
                return Int(line.dropFirst("Forwarding from 127.0.0.1:".count).prefix { $0.isNumber })
            }
            #expect(try identity(local) == "first\n")

            var current = relay
            for (round, port) in [Optional(second), nil].enumerated() {
                kill(current.child.pid, SIGKILL)
                _ = current.child.wait(timeout: 5)
                current = try scene.startRelay(podsFile: pods(port), connector: .native, listen: "127.0.0.1:\(relay.port)")
                _ = try forwarder.waitFor("the Reconnected line", timeout: 15) { text in
                    text.components(separatedBy: "Reconnected to relay").count - 1 == round + 1 ? true : nil
                }
                #expect(try identity(local) == "second\n", "\(forwarder.stderr)")
            }
            #expect(forwarder.stderr.contains("Port svc of pod default/web is now \(second) (was \(first)): forwarding \(local) -> \(second)"),
                    "\(forwarder.stderr)")
            #expect(forwarder.stderr.contains("warning: pod default/web no longer has a port named svc: forwarding \(local) -> \(second) as before"),
                    "\(forwarder.stderr)")
        }
    }

    @Test("A connection that waits longer than --session-wait-timeout for a session is closed with one line")
    func sessionWait() throws {
        try withScene { scene in
            let (_, relay) = try scene.echoPod(connector: .native)
            let forwarder = try scene.startForwarder(relay: relay, pod: "web", remotePorts: [echoPort], extra: ["--session-wait-timeout", "1"])
            kill(relay.child.pid, SIGKILL)
            _ = try forwarder.child.waitFor("the line saying the session is lost") { $0.contains("Lost connection to relay") ? true : nil }
            let waiting = try Net.connect("127.0.0.1", try forwarder.local(echoPort))
            defer { close(waiting) }
            let started = Date()
            #expect(["eof", "reset"].contains(Net.readUntilClosed(waiting, timeout: 10).outcome))
            let seconds = Date().timeIntervalSince(started)
            #expect(seconds >= 0.9 && seconds < 3, "\(seconds)")
            #expect(forwarder.child.stderr.contains("no session to the relay within 1 s"), "\(forwarder.child.stderr)")
            #expect(forwarder.child.isRunning)
        }
    }
}
