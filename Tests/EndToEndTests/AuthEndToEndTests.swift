import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A relay with a token file and authorization rules, and the peers that ask it: curl, spdypeer
/// (kubectl's SPDY, plain and in a WebSocket), channelpeer and the official Python client (the
/// WebSocket channel protocol), h2peer (HTTP/2 streams). Plain HTTP: tokens travel in clear text
/// here, which is what the listen rule keeps off real networks.
private struct SecuredRelay {
    let relay: RelayProcess
    /// alice may reach everything in `default`; the group dev (erin) the pods `web-*` of `dev`.
    let alice: String
    let erin: String
    /// A token the file does not hold.
    let wrong: String

    var all: [String] { [alice, erin, wrong] }

    static func start(_ scene: Scene, extra: [String] = []) throws -> SecuredRelay {
        let namespace = try scene.makeNamespace()
        try scene.serve(in: namespace, port: echoPort)
        let alice = "alice-\(E2E.randomSuffix())-secret", erin = "erin-\(E2E.randomSuffix())-secret"
        let wrong = "wrong-\(E2E.randomSuffix())-secret"
        let tokens = "\(scene.directory)/tokens.csv", rules = "\(scene.directory)/rules.yaml"
        try "# token,user,uid,groups\n\(alice),alice,1001\n\(erin),erin,1002,\"dev,ops\"\n"
            .write(toFile: tokens, atomically: true, encoding: .utf8)
        try """
            allow:
              - {user: alice, namespaces: [default]}
              - {group: dev, namespaces: [dev, staging], pods: ["web-*"]}
            """.write(toFile: rules, atomically: true, encoding: .utf8)
        let pods = """
            pods:
              - {namespace: default, name: web, netns: \(namespace.path)}
              - {namespace: prod, name: web, netns: \(namespace.path)}
              - {namespace: dev, name: web-1, netns: \(namespace.path)}
            """
        let relay = try scene.startRelay(podsFile: pods, connector: .native,
                                         extra: ["-v", "--token-auth-file", tokens, "--authorization-file", rules] + extra)
        return SecuredRelay(relay: relay, alice: alice, erin: erin, wrong: wrong)
    }

    /// No token, the bearer token, or a header as given, for curl.
    func curl(_ arguments: [String], token: String?) throws -> (status: Int, body: String) {
        let header = token.map { ["-H", "Authorization: Bearer \($0)"] } ?? []
        let run = try E2E.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"] + header + arguments, timeout: 20)
        // The body (a Status ends with a line end, as kube-apiserver's do), then the status line.
        var lines = run.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        let status = Int(lines.removeLast()) ?? -1
        if lines.last == "" { lines.removeLast() }
        return (status, lines.joined(separator: "\n"))
    }

    func url(_ path: String) -> String { "http://127.0.0.1:\(relay.port)\(path)" }
}

private let unauthorizedBody = #"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#

private func forbidden(_ user: String, _ verb: String, _ resource: String, namespace: String, name: String?) -> String {
    let subject = name.map { "pods \\\"\($0)\\\" is forbidden" } ?? "pods is forbidden"
    let message = "\(subject): User \\\"\(user)\\\" cannot \(verb) resource \\\"\(resource)\\\" in API group \\\"\\\" in the namespace \\\"\(namespace)\\\""
    let details = name.map { #""details":{"name":"\#($0)","kind":"pods"}"# } ?? #""details":{"kind":"pods"}"#
    return #"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":""# + message
        + #"","reason":"Forbidden","# + details + #","code":403}"#
}

@Suite("End to end: authentication and authorization", .serialized)
struct AuthEndToEndTests {
    @Test("curl: the pod API with a good token, a bad one, none, a forbidden namespace, a list; the port-forward upgrade refused 401 and 403")
    func curlAPI() throws {
        try withScene { scene in
            let secured = try SecuredRelay.start(scene)
            let pod = secured.url("/api/v1/namespaces/default/pods/web")
            let good = try secured.curl([pod], token: secured.alice)
            #expect(good.status == 200 && good.body.contains(#""kind":"Pod""#), "\(good)")
            for token in [nil, secured.wrong] {
                let refused = try secured.curl([pod], token: token)
                #expect(refused.status == 401 && refused.body == unauthorizedBody, "\(refused)")
            }
            let prod = try secured.curl([secured.url("/api/v1/namespaces/prod/pods/web")], token: secured.alice)
            #expect(prod.status == 403 && prod.body == forbidden("alice", "get", "pods", namespace: "prod", name: "web"), "\(prod)")
            // A list: allowed where a rule covers the whole namespace, refused where it covers some pods only.
            let list = try secured.curl([secured.url("/api/v1/namespaces/default/pods")], token: secured.alice)
            #expect(list.status == 200 && list.body.contains(#""kind":"PodList""#), "\(list)")
            let devList = try secured.curl([secured.url("/api/v1/namespaces/dev/pods")], token: secured.erin)
            #expect(devList.status == 403 && devList.body == forbidden("erin", "list", "pods", namespace: "dev", name: nil), "\(devList)")
            let everywhere = try secured.curl([secured.url("/api/v1/pods")], token: secured.alice)
            #expect(everywhere.status == 403 && everywhere.body.contains(#"at the cluster scope"#), "\(everywhere)")
            let devPod = try secured.curl([secured.url("/api/v1/namespaces/dev/pods/web-1")], token: secured.erin)
            #expect(devPod.status == 200, "\(devPod)")
            // kubectl's SPDY upgrade, as curl sends it.
            let upgrade = ["-X", "POST", "-H", "Connection: Upgrade", "-H", "Upgrade: SPDY/3.1", "-H", "X-Stream-Protocol-Version: portforward.k8s.io"]
            let anonymous = try secured.curl(upgrade + [secured.url("/api/v1/namespaces/default/pods/web/portforward")], token: nil)
            #expect(anonymous.status == 401 && anonymous.body == unauthorizedBody, "\(anonymous)")
            let denied = try secured.curl(upgrade + [secured.url("/api/v1/namespaces/prod/pods/web/portforward")], token: secured.alice)
            #expect(denied.status == 403 && denied.body == forbidden("alice", "create", "pods/portforward", namespace: "prod", name: "web"),
                    "\(denied)")
            // Who asks comes before where: a pod that does not exist is 403 too, not 404.
            let missing = try secured.curl(upgrade + [secured.url("/api/v1/namespaces/prod/pods/nope/portforward")], token: secured.alice)
            #expect(missing.status == 403, "\(missing)")
            #expect(secured.relay.child.isRunning)
        }
    }

    @Test("kubectl's SPDY port-forward (spdypeer), plain and in a WebSocket: allowed, 401, 403", arguments: [false, true])
    func spdy(_ ws: Bool) throws {
        try Peers.require()
        try withScene { scene in
            let secured = try SecuredRelay.start(scene)
            let mode = ws ? ["--ws"] : []
            let allowed = try SPDYPeer.run("forward", secured.relay, ["--token", secured.alice, "--bytes", "\(1 << 20)"] + mode)
            #expect(allowed["intact"] as? Bool == true, "\(allowed)")
            let viaNode = try SPDYPeer.run("forward", secured.relay, ["--token", secured.alice, "--node-path"] + mode)
            #expect(viaNode["intact"] as? Bool == true, "\(viaNode)")
            for arguments in [[], ["--token", secured.wrong]] {
                let refused = try SPDYPeer.run("forward", secured.relay, arguments + mode)
                #expect(refused["status"] as? Int == 401 && (refused["answer"] as? String)?.hasSuffix(unauthorizedBody + "\n") == true,
                        "\(refused)")
            }
            let denied = try SPDYPeer.run("forward", secured.relay, ["--token", secured.alice, "--pod", "prod/web"] + mode)
            #expect(denied["status"] as? Int == 403, "\(denied)")
            #expect((denied["answer"] as? String)?
                .hasSuffix(forbidden("alice", "create", "pods/portforward", namespace: "prod", name: "web") + "\n") == true, "\(denied)")
            let deniedNode = try SPDYPeer.run("forward", secured.relay, ["--token", secured.erin, "--pod", "dev/db", "--node-path"] + mode)
            #expect(deniedNode["status"] as? Int == 403, "\(deniedNode)")
        }
    }

    @Test("The channel protocol (websocket-client) and the official Python client with configuration.api_key: allowed, 401, 403")
    func channels() throws {
        try Peers.require()
        try Peers.requireKubernetesClient()
        try withScene { scene in
            let secured = try SecuredRelay.start(scene)
            let channelpeer = E2E.packageRoot + "/Tests/Peers/channelpeer.py"
            func channel(_ namespace: String, _ token: String?) throws -> (status: Int32, stdout: String, stderr: String) {
                let url = "ws://127.0.0.1:\(secured.relay.port)/api/v1/namespaces/\(namespace)/pods/web/portforward"
                let environment = token.map { ["env", "PEER_TOKEN=\($0)"] } ?? []
                return try E2E.run(environment + [Peers.python, channelpeer, url, "v4.channel.k8s.io", "\(echoPort)", "\(1 << 20)"], timeout: 60)
            }
            let allowed = try channel("default", secured.alice)
            #expect(allowed.status == 0 && allowed.stdout.contains("ok \(1 << 20)"), "\(allowed)")
            for token in [nil, secured.wrong] {
                let refused = try channel("default", token)
                #expect(refused.status == 2 && refused.stdout.contains("refused 401 \(unauthorizedBody)"), "\(refused)")
            }
            let denied = try channel("prod", secured.alice)
            #expect(denied.status == 2 && denied.stdout.contains("refused 403 \(forbidden("alice", "create", "pods/portforward", namespace: "prod", name: "web"))"),
                    "\(denied)")

            let k8sclient = E2E.packageRoot + "/Tests/Peers/k8sclient.py"
            func client(_ namespace: String, _ token: String) throws -> (status: Int32, stdout: String, stderr: String) {
                try E2E.run(["env", "K8S_TOKEN=\(token)", Peers.python, k8sclient, secured.relay.url, namespace, "web", "\(echoPort)", "\(256 << 10)"],
                            timeout: 60)
            }
            let good = try client("default", secured.alice)
            #expect(good.status == 0 && good.stdout.contains("phase Running") && good.stdout.contains("ok \(echoPort) \(256 << 10)"), "\(good)")
            let bad = try client("default", secured.wrong)
            #expect(bad.status == 2 && bad.stdout.contains("api error 401 Unauthorized"), "\(bad)")
            let denied403 = try client("prod", secured.alice)
            #expect(denied403.status == 2 && denied403.stdout.contains("api error 403 Forbidden"), "\(denied403)")
            #expect(denied403.stdout.contains(#"cannot get resource \"pods\" in API group \"\" in the namespace \"prod\""#), "\(denied403)")
        }
    }

    @Test("HTTP/2 streams carry their own authorization header: h2peer and curl (prior knowledge and the h2c upgrade)")
    func h2Streams() throws {
        try Peers.require()
        try withScene { scene in
            let secured = try SecuredRelay.start(scene)
            let result = try Peers.h2("headers", secured.relay, ["--headers", "authorization=Bearer \(secured.alice)", "-",
                                                                  "authorization=Bearer \(secured.wrong)",
                                                                  "authorization=Bearer \(secured.erin)"])
            let streams = result["results"] as? [[String: Any]] ?? []
            #expect(streams.count == 4, "\(result)")
            if streams.count == 4 {
                #expect(streams[0]["status"] as? Int == 200 && streams[0]["body"] as? String == "hello", "\(streams[0])")
                #expect(streams[1]["status"] as? Int == 401 && streams[1]["body"] as? String == unauthorizedBody + "\n", "\(streams[1])")
                #expect(streams[2]["status"] as? Int == 401, "\(streams[2])")
                #expect(streams[3]["status"] as? Int == 403 && (streams[3]["body"] as? String)?.hasPrefix(#"{"kind":"Status""#) == true,
                        "\(streams[3])")
            }
            // The node's path through the API server's proxy, and one named by the rules' glob.
            let devStreams = try Peers.h2("headers", secured.relay, ["--path", "/proxy/nodes/\(scene.node)/portForward/dev/web-1",
                                                                     "--headers", "authorization=Bearer \(secured.erin)",
                                                                     "authorization=Bearer \(secured.alice)"])
            let dev = devStreams["results"] as? [[String: Any]] ?? []
            #expect(dev.first?["status"] as? Int == 200 && dev.last?["status"] as? Int == 403, "\(devStreams)")
            for mode in ["--http2-prior-knowledge", "--http2"] {
                let path = secured.url("/portForward/default/web")
                let allowed = try secured.curl([mode, "-H", "port: \(echoPort)", "--data-binary", "hello", path], token: secured.alice)
                #expect(allowed.status == 200 && allowed.body == "hello", "\(mode): \(allowed)")
                let anonymous = try secured.curl([mode, "-H", "port: \(echoPort)", "--data-binary", "hello", path], token: nil)
                #expect(anonymous.status == 401 && anonymous.body == unauthorizedBody, "\(mode): \(anonymous)")
                let denied = try secured.curl([mode, "-H", "port: \(echoPort)", "--data-binary", "hello", secured.url("/portForward/prod/web")],
                                              token: secured.alice)
                #expect(denied.status == 403 && denied.body == forbidden("alice", "create", "pods/portforward", namespace: "prod", name: "web"),
                        "\(mode): \(denied)")
            }
        }
    }

    @Test("No secret in -v output: tokens (good, bad, in an invalid HTTP/2 header) and the token file's contents never appear")
    func noSecretsInLogs() throws {
        try Peers.require()
        try withScene { scene in
            let secured = try SecuredRelay.start(scene)
            for token in secured.all {
                _ = try secured.curl([secured.url("/api/v1/namespaces/default/pods/web")], token: token)
                _ = try secured.curl([secured.url("/api/v1/namespaces/prod/pods/web")], token: token)
                _ = try secured.curl(["--http2-prior-knowledge", "-H", "port: \(echoPort)", "--data-binary", "x",
                                      secured.url("/portForward/prod/web")], token: token)
                _ = try SPDYPeer.run("forward", secured.relay, ["--token", token, "--pod", "prod/web", "--bytes", "16"])
            }
            // An uppercase header name is invalid in HTTP/2: nghttp2 reports the field, which the
            // relay logs without its value.
            _ = try Peers.h2("headers", secured.relay, ["--headers", "Authorization=Bearer \(secured.alice)"])
            // A malformed HTTP/1.1 request carrying a token.
            _ = try rawStatus(secured.relay, Array("GET /api/v1/pods HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(secured.erin)\r\nbad header\r\n\r\n".utf8))
            Thread.sleep(forTimeInterval: 0.5)
            let log = secured.relay.child.stderr + secured.relay.child.stdout
            #expect(log.contains("api: GET /api/v1/namespaces/prod/pods/web from 127.0.0.1: 403"), "\(log)")
            #expect(log.contains("refused with 403"), "\(log)")
            #expect(log.contains("Invalid HTTP header field") && log.contains("not shown"), "\(log)")
            for token in secured.all {
                #expect(!log.contains(token), "the relay's output holds a token:\n\(log)")
            }
            #expect(!log.lowercased().contains("bearer"), "\(log)")
        }
    }

    @Test("A bad token or rules file stops the start with one line naming the line, never the token")
    func badFiles() throws {
        try withScene { scene in
            let pods = "\(scene.directory)/pods.yaml"
            try "pods:\n  - {namespace: default, name: web}\n".write(toFile: pods, atomically: true, encoding: .utf8)
            let tokens = "\(scene.directory)/tokens.csv"
            try "good-secret-token,alice,1\nsecond-secret-token,bob\n".write(toFile: tokens, atomically: true, encoding: .utf8)
            let run = try E2E.run([E2E.binary, "relay", "--pods", pods, "--listen", "127.0.0.1:0", "--token-auth-file", tokens], timeout: 20)
            #expect(run.status == 1 && run.stderr == "error: \(tokens):2: expected token,user,uid[,groups], found 2 fields\n", "\(run)")
            #expect(!run.stderr.contains("secret"))
            let rules = "\(scene.directory)/rules.yaml"
            try "allow:\n  - {user: alice, namespace: [default]}\n".write(toFile: rules, atomically: true, encoding: .utf8)
            let badRules = try E2E.run([E2E.binary, "relay", "--pods", pods, "--listen", "127.0.0.1:0", "--authorization-file", rules], timeout: 20)
            #expect(badRules.status == 1
                    && badRules.stderr == "error: \(rules):2: rule #1: unknown field \"namespace\" (known: user, group, namespaces, pods)\n",
                    "\(badRules)")
        }
    }

    @Test("The listen rule: beyond loopback without TLS and authentication the relay refuses to start; --insecure warns and starts")
    func listenRule() throws {
        try withScene { scene in
            let pods = "\(scene.directory)/pods.yaml"
            try "pods:\n  - {namespace: default, name: web}\n".write(toFile: pods, atomically: true, encoding: .utf8)
            let tokens = "\(scene.directory)/tokens.csv"
            try "t-\(E2E.randomSuffix()),alice,1\n".write(toFile: tokens, atomically: true, encoding: .utf8)
            let refused = try E2E.run([E2E.binary, "relay", "--pods", pods, "--listen", "0.0.0.0:0"], timeout: 20)
            #expect(refused.status == 1, "\(refused)")
            #expect(refused.stderr == "error: refusing to listen on 0.0.0.0:0 without TLS (--tls-cert-file) and authentication (--token-auth-file or --client-ca-file): a non-loopback address needs TLS and authentication (--insecure to listen anyway)\n",
                    "\(refused)")
            let withTokens = try E2E.run([E2E.binary, "relay", "--pods", pods, "--listen", "0.0.0.0:0", "--token-auth-file", tokens], timeout: 20)
            #expect(withTokens.status == 1 && withTokens.stderr.hasPrefix("error: refusing to listen on 0.0.0.0:0 without TLS (--tls-cert-file):"),
                    "\(withTokens)")
            let relay = try scene.startRelay(podsFile: "pods:\n  - {namespace: default, name: web}\n", connector: .native,
                                             listen: "0.0.0.0:0", extra: ["--insecure"])
            #expect(relay.child.isRunning)
            let warning = try relay.child.waitFor("the warning line") { _ in
                relay.child.stderr.split(separator: "\n").first { $0.hasPrefix("warning: listening on 0.0.0.0:0 without TLS") }
            }
            #expect(warning.contains("--insecure"))
            let version = try E2E.run(["curl", "-s", "--max-time", "5", "http://127.0.0.1:\(relay.port)/version"], timeout: 10)
            #expect(version.stdout.contains(#""major":"1""#), "\(version)")
        }
    }

    @Test("Our client: --token over http:// is not sent, and says so in one line; the relay's 401 is shown as its message")
    func clientToken() throws {
        try withScene { scene in
            let secured = try SecuredRelay.start(scene)
            let child = try scene.start([E2E.binary, "forward", "--server", secured.relay.url, "--io", E2E.io, "--token", secured.alice, "web", ":\(echoPort)"],
                                        name: "forward")
            let status = child.wait(timeout: 15)
            #expect(status == 1, "\(child.output)")
            #expect(child.stderr.contains("warning: --token is not sent to \(secured.relay.url): it would travel in plain text (use an https:// server)"),
                    "\(child.stderr)")
            #expect(child.stderr.contains("answered 401 to the upgrade: Unauthorized"), "\(child.stderr)")
            #expect(!child.stderr.contains(secured.alice))
        }
    }

    @Test("kubectl over http drops its token (client-go sends credentials only over https): the relay's 401 is kubectl's 'You must be logged in', exit 1")
    func kubectlUnauthorized() throws {
        try Kubectl.require(Kubectl.versioned)
        try withScene { scene in
            let secured = try SecuredRelay.start(scene)
            for websockets in ["true", "false"] {
                let run = try E2E.run(["env", "HOME=\(scene.directory)", "KUBECTL_PORT_FORWARD_WEBSOCKETS=\(websockets)", Kubectl.versioned,
                                       "--server", secured.relay.url, "--token", secured.alice, "--cache-dir", "\(scene.directory)/kube-cache",
                                       "port-forward", "pod/web", "0:\(echoPort)"], timeout: 30)
                #expect(run.status == 1, "\(run)")
                #expect(run.stderr.contains("error: You must be logged in to the server (the server has asked for the client to provide credentials)"),
                        "\(run)")
            }
            #expect(secured.relay.child.stderr.contains("api: GET /api?timeout=32s from 127.0.0.1: 401"), "\(secured.relay.child.stderr)")
            #expect(!secured.relay.child.stderr.contains(secured.alice))
        }
    }

    @Test("kubectl, anonymous, with rules that allow system:unauthenticated in default: port-forward works in both modes; prod prints the Forbidden message")
    func kubectlRules() throws {
        try Kubectl.require(Kubectl.versioned)
        try withScene { scene in
            let namespace = try scene.makeNamespace()
            try scene.serve(in: namespace, port: echoPort)
            let rules = "\(scene.directory)/rules.yaml"
            try "allow:\n  - {group: \"system:unauthenticated\", namespaces: [default]}\n".write(toFile: rules, atomically: true, encoding: .utf8)
            let relay = try scene.startRelay(podsFile: """
                pods:
                  - {namespace: default, name: web, netns: \(namespace.path)}
                  - {namespace: prod, name: web, netns: \(namespace.path)}
                """, connector: .native, extra: ["-v", "--authorization-file", rules])
            let config = try Kubectl.config(relay, in: scene.directory)
            for websockets in ["true", "false"] {
                let child = try scene.start(["env", "HOME=\(scene.directory)", "KUBECONFIG=\(config)", "KUBECTL_PORT_FORWARD_WEBSOCKETS=\(websockets)",
                                             Kubectl.versioned, "--cache-dir", "\(scene.directory)/kube-cache", "port-forward", "pod/web", "0:\(echoPort)"],
                                            name: "kubectl")
                let port = try child.waitFor("kubectl's Forwarding line") { text -> Int? in
                    guard let range = text.range(of: "Forwarding from 127.0.0.1:") else { return nil }
                    return Int(text[range.upperBound...].prefix { $0.isNumber })
                }
                let payload = Net.randomBytes(1 << 20)
                let echoed = try Net.echo("127.0.0.1", port, payload, timeout: 30)
                #expect(Net.same(echoed, payload), "KUBECTL_PORT_FORWARD_WEBSOCKETS=\(websockets): \(Net.firstDifference(echoed, payload))")
                child.kill()
                let denied = try E2E.run(["env", "HOME=\(scene.directory)", "KUBECONFIG=\(config)", "KUBECTL_PORT_FORWARD_WEBSOCKETS=\(websockets)",
                                          Kubectl.versioned, "--cache-dir", "\(scene.directory)/kube-cache", "-n", "prod",
                                          "port-forward", "pod/web", "0:\(echoPort)"], timeout: 30)
                #expect(denied.status == 1, "\(denied)")
                #expect(denied.stderr.contains(#"Error from server (Forbidden): pods "web" is forbidden: User "system:anonymous" cannot get resource "pods" in API group "" in the namespace "prod""#),
                        "\(denied)")
            }
            let log = relay.child.stderr
            #expect(log.contains("port-forward from 127.0.0.1: SPDY/3.1 in a WebSocket for pod default/web"), "\(log)")
            #expect(log.contains("port-forward from 127.0.0.1: SPDY/3.1 for pod default/web"), "\(log)")
        }
    }
}
