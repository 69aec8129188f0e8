import CSSL
import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// Authentication and authorization over TLS, where kubectl sends its credentials: tokens and
// client certificates, kubectl in both port-forward modes, curl over HTTP/2, our client's --token.

/// A TLS relay with default/web and prod/web (one echo server), a token file (alice, erin in the
/// group dev) and rules (alice: default; dev: web-* in dev); `clientCA` adds --client-ca-file.
private struct SecuredTLSRelay {
    let relay: RelayProcess
    let files: TLSFiles
    let alice: String
    let wrong: String

    static func start(_ scene: Scene, clientCA: Bool = false) throws -> SecuredTLSRelay {
        let files = try TLSFiles(in: scene.directory)
        let namespace = try scene.makeNamespace()
        try scene.serve(in: namespace, port: echoPort)
        let alice = "alice-\(E2E.randomSuffix())-secret", wrong = "wrong-\(E2E.randomSuffix())-secret"
        let tokens = "\(scene.directory)/tokens.csv", rules = "\(scene.directory)/rules.yaml"
        try "\(alice),alice,1001\nerin-\(E2E.randomSuffix()),erin,1002,dev\n".write(toFile: tokens, atomically: true, encoding: .utf8)
        try "allow:\n  - {user: alice, namespaces: [default]}\n  - {group: dev, namespaces: [dev], pods: [\"web-*\"]}\n"
            .write(toFile: rules, atomically: true, encoding: .utf8)
        var extra = ["-v", "--tls-cert-file", files.serverCertificate, "--tls-private-key-file", files.serverKey,
                     "--token-auth-file", tokens, "--authorization-file", rules]
        if clientCA { extra += ["--client-ca-file", files.ca] }
        var relay = try scene.startRelay(podsFile: """
            pods:
              - {namespace: default, name: web, netns: \(namespace.path)}
              - {namespace: prod, name: web, netns: \(namespace.path)}
            """, connector: .native, extra: extra)
        relay.scheme = "https"
        return SecuredTLSRelay(relay: relay, files: files, alice: alice, wrong: wrong)
    }

    /// A kubeconfig with the CA, and a token or a client certificate.
    func kubeconfig(_ scene: Scene, token: String? = nil, certificate: Bool = false, name: String) throws -> String {
        try scene.tlsKubeconfig(relay, ca: files.ca, certificate: certificate ? files.clientCertificate : nil,
                                key: certificate ? files.clientKey : nil, token: token ?? "", name: name)
    }

    /// kubectl port-forward with `config`, run to its end (a refusal) or until its Forwarding line.
    func kubectl(_ scene: Scene, config: String, namespace: String = "default", websockets: Bool, name: String) throws -> Child {
        try scene.start(["env", "HOME=\(scene.directory)", "KUBECONFIG=\(config)", "KUBECTL_PORT_FORWARD_WEBSOCKETS=\(websockets)",
                         Kubectl.versioned, "--cache-dir", "\(scene.directory)/kube-cache-\(name)", "-n", namespace,
                         "port-forward", "pod/web", "0:\(echoPort)"], name: "kubectl-\(name)")
    }
}

private func forwardingPort(_ child: Child) throws -> Int {
    try child.waitFor("kubectl's Forwarding line") { text -> Int? in
        guard let range = text.range(of: "Forwarding from 127.0.0.1:") else { return nil }
        let digits = text[range.upperBound...].prefix { $0.isNumber }
        return text[range.upperBound...].dropFirst(digits.count).hasPrefix(" ->") ? Int(digits) : nil
    }
}

@Suite("End to end: authentication and authorization over TLS (kubectl, curl, our client)", .serialized)
struct AuthTLSEndToEndTests {
    @Test("kubectl over https with a token, both modes: forwards; a wrong token: 'You must be logged in', exit 1; a forbidden namespace: the Forbidden message, exit 1")
    func kubectlToken() throws {
        try Kubectl.require(Kubectl.versioned)
        try withScene { scene in
            let secured = try SecuredTLSRelay.start(scene)
            let good = try secured.kubeconfig(scene, token: secured.alice, name: "good")
            let bad = try secured.kubeconfig(scene, token: secured.wrong, name: "bad")
            for websockets in [true, false] {
                let child = try secured.kubectl(scene, config: good, websockets: websockets, name: "good-\(websockets)")
                let port = try forwardingPort(child)
                let payload = Net.randomBytes(2 << 20)
                let echoed = try Net.echo("127.0.0.1", port, payload, timeout: 60)
                #expect(Net.same(echoed, payload), "websockets \(websockets): \(Net.firstDifference(echoed, payload))")
                child.kill()

                let wrong = try secured.kubectl(scene, config: bad, websockets: websockets, name: "bad-\(websockets)")
                let wrongStatus = wrong.wait(timeout: 30)
                #expect(wrongStatus != nil && wrongStatus != 0, "\(wrong.output)")
                // What kubectl prints for kube-apiserver's 401 too: its discovery client does not decode the Status body.
                #expect(wrong.stderr.contains("error: You must be logged in to the server (the server has asked for the client to provide credentials)"),
                        "\(wrong.output)")

                let denied = try secured.kubectl(scene, config: good, namespace: "prod", websockets: websockets, name: "denied-\(websockets)")
                let deniedStatus = denied.wait(timeout: 30)
                #expect(deniedStatus != nil && deniedStatus != 0, "\(denied.output)")
                #expect(denied.stderr.contains(#"Error from server (Forbidden): pods "web" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "prod""#),
                        "\(denied.output)")
            }
            let log = secured.relay.child.stderr
            #expect(log.contains("(HTTP/2): 401") && log.contains("(HTTP/2): 403"), "\(log)")
            #expect(!log.contains(secured.alice) && !log.contains(secured.wrong), "a token in the relay's output:\n\(log)")
        }
    }

    @Test("kubectl with a client certificate (CN alice, O dev) and no token: allowed by the rules in default, Forbidden in prod")
    func kubectlCertificate() throws {
        try Kubectl.require(Kubectl.versioned)
        try withScene { scene in
            let secured = try SecuredTLSRelay.start(scene, clientCA: true)
            let config = try secured.kubeconfig(scene, certificate: true, name: "certificate")
            for websockets in [true, false] {
                let child = try secured.kubectl(scene, config: config, websockets: websockets, name: "cert-\(websockets)")
                let port = try forwardingPort(child)
                let payload = Net.randomBytes(1 << 20)
                #expect(Net.same(try Net.echo("127.0.0.1", port, payload, timeout: 60), payload), "websockets \(websockets)")
                child.kill()
                let denied = try secured.kubectl(scene, config: config, namespace: "prod", websockets: websockets, name: "cert-denied-\(websockets)")
                let status = denied.wait(timeout: 30)
                #expect(status != nil && status != 0, "\(denied.output)")
                #expect(denied.stderr.contains(#"pods "web" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "prod""#),
                        "\(denied.output)")
            }
        }
    }

    @Test("curl --http2 over TLS: the pod API with a good token, a wrong one and a forbidden namespace, as HTTP/2 streams")
    func curlHTTP2() throws {
        try withScene { scene in
            let secured = try SecuredTLSRelay.start(scene)
            func get(_ path: String, _ token: String?) throws -> (status: Int32, stdout: String, stderr: String) {
                try E2E.run(["curl", "-sS", "--http2", "--cacert", secured.files.ca, "-w", "\n%{http_version} %{http_code}"]
                            + (token.map { ["-H", "Authorization: Bearer \($0)"] } ?? []) + ["\(secured.relay.url)\(path)"], timeout: 20)
            }
            let good = try get("/api/v1/namespaces/default/pods/web", secured.alice)
            #expect(good.stdout.hasSuffix("\n2 200") && good.stdout.contains(#""kind":"Pod""#), "\(good)")
            let wrong = try get("/api/v1/namespaces/default/pods/web", secured.wrong)
            #expect(wrong.stdout.hasSuffix("\n2 401") && wrong.stdout.contains(#""reason":"Unauthorized""#), "\(wrong)")
            let denied = try get("/api/v1/namespaces/prod/pods/web", secured.alice)
            #expect(denied.stdout.hasSuffix("\n2 403"), "\(denied)")
            #expect(denied.stdout.contains(#"pods \"web\" is forbidden: User \"alice\" cannot get resource \"pods\" in API group \"\" in the namespace \"prod\""#), "\(denied)")
        }
    }

    @Test("Our client over https with --token: forwards; a wrong token and a forbidden namespace: one line each, at start (the client reads the pod first)")
    func clientToken() throws {
        try withScene { scene in
            let secured = try SecuredTLSRelay.start(scene)
            let ca = ["--certificate-authority", secured.files.ca]
            let forwarder = try scene.startForwarder(relay: secured.relay, pod: "web", remotePorts: [echoPort], extra: ca + ["--token", secured.alice])
            let payload = Net.randomBytes(2 << 20)
            #expect(Net.same(try Net.echo("127.0.0.1", try forwarder.local(echoPort), payload, timeout: 60), payload))
            #expect(!forwarder.child.stderr.contains("warning: --token"), "\(forwarder.child.stderr)")
            // As kubectl, the client reads the pod before it listens: the refusal is the pod read's
            // (get pods), one line, and the client ends.
            for (token, namespace, expected) in [(secured.wrong, "default", "error: Unauthorized"),
                                                 (secured.alice, "prod", #"error: pods "web" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "prod""#)] {
                let child = try scene.start([E2E.binary, "forward", "--server", secured.relay.url, "--io", E2E.io, "-n", namespace,
                                             "--token", token] + ca + ["web", ":\(echoPort)"], name: "forward-refused")
                let status = child.wait(timeout: 15)
                #expect(status == 1, "\(child.output)")
                let errors = child.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") }
                #expect(errors == [Substring(expected)], "\(child.output)")
                #expect(!child.stdout.contains("Forwarding from"), "\(child.output)")
                #expect(!child.stderr.contains(token))
            }
            #expect(!secured.relay.child.stderr.contains(secured.alice))
        }
    }
}

/// A client certificate for `alice.key`'s key whose subject is exactly `names` (NID, UTF8String bytes as given, no length bound: a NUL or
/// a line end inside included, which the openssl command cannot write), signed by the test CA.
private func certificate(_ files: TLSFiles, _ file: String, _ names: [(nid: Int32, value: [UInt8])]) throws -> String {
    func pem<T>(_ path: String, _ read: (OpaquePointer) -> T?) throws -> T {
        guard let bio = BIO_new_file(path, "r") else { throw HarnessError("cannot open \(path)") }
        defer { BIO_free(bio) }
        guard let value = read(bio) else { throw HarnessError("cannot read \(path)") }
        return value
    }
    let caCertificate = try pem(files.ca) { PEM_read_bio_X509($0, nil, nil, nil) }
    let caKey = try pem("\(files.directory)/ca.key") { PEM_read_bio_PrivateKey($0, nil, nil, nil) }
    let key = try pem(files.clientKey) { PEM_read_bio_PrivateKey($0, nil, nil, nil) }
    defer { X509_free(caCertificate); EVP_PKEY_free(caKey); EVP_PKEY_free(key) }
    guard let certificate = X509_new() else { throw HarnessError("X509_new") }
    defer { X509_free(certificate) }
    X509_set_version(certificate, 2)
    ASN1_INTEGER_set(X509_get_serialNumber(certificate), Int(E2E.randomSuffix().hashValue & 0x7fff_ffff))
    X509_gmtime_adj(X509_getm_notBefore(certificate), -3600)
    X509_gmtime_adj(X509_getm_notAfter(certificate), 86400)
    X509_set_issuer_name(certificate, X509_get_subject_name(caCertificate))
    let subject = X509_get_subject_name(certificate)
    for (nid, value) in names {
        guard X509_NAME_add_entry_by_NID(subject, nid, V_ASN1_UTF8STRING, value, Int32(value.count), -1, 0) == 1 else {
            throw HarnessError("X509_NAME_add_entry_by_NID")
        }
    }
    X509_set_pubkey(certificate, key)
    guard X509_sign(certificate, caKey, EVP_sha256()) > 0 else { throw HarnessError("X509_sign") }
    let path = "\(files.directory)/\(file).crt"
    guard let out = BIO_new_file(path, "w") else { throw HarnessError("cannot write \(path)") }
    defer { BIO_free(out) }
    guard PEM_write_bio_X509(out, certificate) == 1 else { throw HarnessError("PEM_write_bio_X509") }
    return path
}

@Suite("End to end: a client certificate's names, taken whole", .serialized)
struct CertificateNameTests {
    @Test("A CN or O with a NUL inside is that whole name, not the text before the NUL (as kube-apiserver reads it); a CN with a line end cannot forge a log line; an overlong CN is no identity")
    func namesWhole() throws {
        try withScene { scene in
            let files = try TLSFiles(in: scene.directory)
            let rules = "\(scene.directory)/rules.yaml"
            try "allow:\n  - {user: alice, namespaces: [default]}\n  - {group: dev, namespaces: [prod]}\n".write(toFile: rules, atomically: true, encoding: .utf8)
            let (_, relay) = try scene.tlsRelay(files, clientCA: files.ca, extra: ["--authorization-file", rules])
            func forward(_ certificate: String, _ namespace: String) throws -> String {
                let result = try E2E.run(["curl", "-sS", "--http2", "--cacert", files.ca, "--cert", certificate, "--key", files.clientKey,
                                          "-H", "port: \(echoPort)", "--data-binary", "x", "-w", "\n%{http_code}",
                                          "\(relay.url)/portForward/\(namespace)/web"], timeout: 20)
                return result.stdout
            }
            // The certificates work at all: alice's own (CN alice, O dev) reaches default/web.
            #expect(try forward(files.clientCertificate, "default").hasSuffix("x\n200"))

            // Before: the name ended at the NUL, "alice" and the group "dev", and both got in (200).
            let alice = try certificate(files, "nul-cn", [(NID_commonName, Array("alice\u{0}mallory".utf8))])
            let notAlice = try forward(alice, "default")
            #expect(notAlice.hasSuffix("\n403") && notAlice.contains(#"User \"alice\\x00mallory\" cannot create"#), "\(notAlice)")
            let group = try certificate(files, "nul-o", [(NID_commonName, Array("mallory".utf8)), (NID_organizationName, Array("dev\u{0}.example".utf8))])
            let notDev = try forward(group, "prod")
            #expect(notDev.hasSuffix("\n403") && notDev.contains(#"User \"mallory\""#), "\(notDev)")

            // Two CNs: the last is the user, as Go's pkix.Name (and so kube-apiserver) reads it.
            // Before: the first (alice, allowed in default); now bob (403).
            let twoNames = try certificate(files, "two-cn", [(NID_commonName, Array("alice".utf8)), (NID_commonName, Array("bob".utf8))])
            let bob = try forward(twoNames, "default")
            #expect(bob.hasSuffix("\n403") && bob.contains(#"User \"bob\" cannot create"#), "\(bob)")

            // Before: cut to 1,023 bytes, a different user (403); now no identity (401).
            let long = try certificate(files, "long-cn", [(NID_commonName, Array(("alice" + String(repeating: "x", count: 2000)).utf8))])
            let overlong = try forward(long, "default")
            #expect(overlong.hasSuffix("\n401"), "\(overlong)")

            // Before: the relay's -v line printed the name raw, and this one as two lines.
            let forged = "mallory\nTLS from 10.0.0.1: ALPN h2, client certificate of admin"
            _ = try forward(try certificate(files, "newline-cn", [(NID_commonName, Array(forged.utf8))]), "default")
            let log = try relay.child.waitFor("the relay's line for the forged name") { text in
                text.contains(#"client certificate of "mallory\nTLS from 10.0.0.1"#) ? text : nil
            }
            #expect(!log.contains("\nTLS from 10.0.0.1"), "\(log)")
            #expect(log.contains(#"client certificate of "alice\x00mallory""#), "\(log)")
        }
    }
}

@Suite("End to end: TLS files that are not regular files", .serialized)
struct TLSFileTests {
    @Test("A FIFO as --tls-cert-file, --client-ca-file or the client's --certificate-authority ends the start with one line (it held the relay or the client at start forever, with no line)")
    func fifo() throws {
        try withScene { scene in
            let files = try TLSFiles(in: scene.directory)
            let fifo = "\(scene.directory)/fifo.pem"
            #expect(mkfifo(fifo, 0o600) == 0)
            let pods = "\(scene.directory)/pods.yaml"
            try "pods:\n  - {namespace: default, name: web}\n".write(toFile: pods, atomically: true, encoding: .utf8)
            let relay = [E2E.binary, "relay", "--listen", "127.0.0.1:0", "--pods", pods]
            // The client reads its files once connected: a relay to connect to.
            let (_, running) = try scene.tlsRelay(files)
            for (arguments, expected) in [
                (relay + ["--tls-cert-file", fifo, "--tls-private-key-file", files.serverKey], "error: cannot load --tls-cert-file \(fifo): not a regular file"),
                (relay + ["--tls-cert-file", files.serverCertificate, "--tls-private-key-file", files.serverKey, "--client-ca-file", fifo],
                 "error: cannot load --client-ca-file \(fifo): not a regular file"),
                ([E2E.binary, "forward", "--server", running.url, "--certificate-authority", fifo, "web", ":\(echoPort)"],
                 "cannot load --certificate-authority \(fifo): not a regular file"),
            ] {
                let started = Date()
                let result = try E2E.run(arguments, timeout: 10)
                #expect(Date().timeIntervalSince(started) < 5 && result.status == 1, "\(arguments): \(result)")
                #expect(result.stderr.contains(expected) && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
            }
        }
    }
}
