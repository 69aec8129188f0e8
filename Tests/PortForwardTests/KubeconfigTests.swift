import Testing
@testable import PortForward

@Suite("Kubeconfig")
struct KubeconfigTests {
    static let first = """
        apiVersion: v1
        kind: Config
        current-context: dev
        clusters:
        - name: lab
          cluster:
            server: https://10.0.0.1:6443
            certificate-authority: ca.crt
            tls-server-name: api.lab
        - name: plain
          cluster: {server: "http://127.0.0.1:8080", insecure-skip-tls-verify: true}
        users:
        - name: alice
          user:
            token: alice-token
            client-certificate: /abs/alice.crt
            client-key: keys/alice.key
        - name: sso
          user:
            exec:
              apiVersion: client.authentication.k8s.io/v1
              command: ./bin/get-token
              args: [--cluster, lab]
              env: [{name: REGION, value: eu}]
              provideClusterInfo: true
        contexts:
        - name: dev
          context: {cluster: lab, user: alice, namespace: dev}
        - name: bare
          context: {cluster: plain}
        """

    static let second = """
        current-context: other
        clusters:
        - name: lab
          cluster: {server: "https://shadowed:1"}
        - name: extra
          cluster:
            server: https://extra:443
            certificate-authority-data: aGVsbG8=
        users:
        - name: alice
          user: {token: shadowed}
        - name: carol
          user: {client-certificate-data: Y2VydA==, client-key-data: a2V5}
        contexts:
        - name: other
          context: {cluster: extra, user: carol}
        """

    @Test("One file: names, the current context, paths relative to the file, exec plugins")
    func oneFile() throws {
        let config = try Kubeconfig(yaml: Self.first, path: "/home/me/.kube/config")
        #expect(config.currentContext == "dev")
        let lab = try #require(config.clusters["lab"])
        #expect(lab.server == "https://10.0.0.1:6443")
        #expect(lab.certificateAuthority == "/home/me/.kube/ca.crt")
        #expect(lab.tlsServerName == "api.lab")
        #expect(config.clusters["plain"]?.insecureSkipTLSVerify == true)
        let alice = try #require(config.users["alice"])
        #expect(alice.token == "alice-token")
        #expect(alice.clientCertificate == "/abs/alice.crt")
        #expect(alice.clientKey == "/home/me/.kube/keys/alice.key")
        let exec = try #require(config.users["sso"]?.exec)
        #expect(exec.command == "/home/me/.kube/./bin/get-token")
        #expect(exec.args == ["--cluster", "lab"])
        #expect(exec.env == [Kubeconfig.Pair(name: "REGION", value: "eu")])
        #expect(exec.provideClusterInfo)
        #expect(config.contexts["dev"] == Kubeconfig.Context(cluster: "lab", user: "alice", namespace: "dev"))
    }

    @Test("Merged as kubectl merges: the first file to name a thing wins, and the first current-context")
    func merge() throws {
        let merged = Kubeconfig.merged([try Kubeconfig(yaml: Self.first, path: "/a/config"),
                                        try Kubeconfig(yaml: Self.second, path: "/b/config")])
        #expect(merged.currentContext == "dev")
        #expect(merged.clusters["lab"]?.server == "https://10.0.0.1:6443")
        #expect(merged.users["alice"]?.token == "alice-token")
        #expect(merged.clusters["extra"]?.certificateAuthorityData == Array("hello".utf8))
        #expect(merged.users["carol"]?.clientKeyData == Array("key".utf8))
        let other = try merged.select(Kubeconfig.Overrides(context: "other"))
        #expect(other.clusterName == "extra")
        #expect(other.user.clientCertificateData == Array("cert".utf8))
        #expect(other.namespace == "default")
        // The other order: the second file's names and current context come first.
        let reversed = Kubeconfig.merged([try Kubeconfig(yaml: Self.second, path: "/b/config"),
                                          try Kubeconfig(yaml: Self.first, path: "/a/config")])
        #expect(reversed.currentContext == "other")
        #expect(reversed.clusters["lab"]?.server == "https://shadowed:1")
    }

    @Test("Which files: --kubeconfig alone, else KUBECONFIG's list, else ~/.kube/config")
    func paths() {
        #expect(Kubeconfig.paths(explicit: "/x", environment: ["KUBECONFIG": "/a:/b", "HOME": "/h"]) == (["/x"], true))
        let listed = Kubeconfig.paths(explicit: nil, environment: ["KUBECONFIG": "/a::/b:/a:", "HOME": "/h"])
        #expect(listed.paths == ["/a", "/b"])
        #expect(!listed.mustExist)
        #expect(Kubeconfig.paths(explicit: nil, environment: ["HOME": "/h"]).paths == ["/h/.kube/config"])
        #expect(Kubeconfig.paths(explicit: "", environment: ["KUBECONFIG": ""]).paths == [])
    }

    @Test("Selection: the context's cluster, user and namespace, each overridden by its flag")
    func selection() throws {
        let config = try Kubeconfig(yaml: Self.first, path: "/k/config")
        let current = try config.select()
        #expect(current.context == "dev")
        #expect(current.clusterName == "lab")
        #expect(current.userName == "alice")
        #expect(current.namespace == "dev")
        let flags = try config.select(Kubeconfig.Overrides(cluster: "plain", user: "sso", namespace: "prod"))
        #expect(flags.cluster.server == "http://127.0.0.1:8080")
        #expect(flags.user.exec != nil)
        #expect(flags.namespace == "prod")
        let bare = try config.select(Kubeconfig.Overrides(context: "bare"))
        #expect(bare.userName == nil)
        #expect(bare.user == Kubeconfig.User())
        #expect(bare.namespace == "default")
        #expect(throws: Kubeconfig.LoadError(description: "context \"nope\" does not exist")) {
            try config.select(Kubeconfig.Overrides(context: "nope"))
        }
        #expect(throws: Kubeconfig.LoadError(description: "user \"bob\" does not exist")) {
            try config.select(Kubeconfig.Overrides(user: "bob"))
        }
        #expect(throws: Kubeconfig.LoadError.self) { try Kubeconfig().select() }
        let noScheme = try Kubeconfig(yaml: "clusters: [{name: c, cluster: {server: 'example.com:6443'}}]\ncurrent-context: x\ncontexts: [{name: x, context: {cluster: c}}]", path: "/k")
        #expect(throws: Kubeconfig.LoadError.self) { try noScheme.select() }
    }

    @Test("Bad files are refused with the file's name", arguments: [
        ("clusters: {a: b}", "'clusters' must be a list"),
        ("users: [{user: {token: x}}]", "each entry of 'users' needs a name"),
        ("clusters: [{name: c, cluster: {certificate-authority-data: '!!!'}}]", "certificate-authority-data is not base64"),
        ("users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1alpha1, command: x}}}]", "is not one of"),
        ("users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1}}}]", "exec needs a command"),
        ("[1, 2]", "expected a mapping at the top"),
        ("a: [", "not valid YAML"),
    ])
    func badFiles(text: String, problem: String) {
        do {
            _ = try Kubeconfig(yaml: text, path: "/k/bad")
            Issue.record("accepted: \(text)")
        } catch {
            #expect("\(error)".hasPrefix("kubeconfig /k/bad: "))
            #expect("\(error)".contains(problem), "\(error)")
        }
    }

    @Test("A mechanism this client does not implement is named, not ignored")
    func unsupported() throws {
        let config = try Kubeconfig(yaml: """
            users:
            - {name: gcp, user: {auth-provider: {name: gcp}}}
            - {name: basic, user: {username: u, password: p}}
            """, path: "/k")
        #expect(config.users["gcp"]?.unsupported.count == 1)
        #expect(config.users["gcp"]?.unsupported.first?.contains("auth-provider") == true)
        #expect(config.users["basic"]?.unsupported.first?.contains("basic") == true)
    }

    @Test("proxy-url and impersonation (as, as-uid, as-groups, as-user-extra) are said, one line each; empty ones are unset")
    func proxyAndImpersonation() throws {
        let config = try Kubeconfig(yaml: """
            current-context: c
            clusters:
            - {name: lab, cluster: {server: "https://10.0.0.1:6443", proxy-url: "socks5://proxy:1080"}}
            - {name: direct, cluster: {server: "https://10.0.0.2:6443", proxy-url: ""}}
            users:
            - name: admin
              user:
                token: t
                as: alice
                as-uid: "1001"
                as-groups: [dev, ops]
                as-user-extra: {reason: [audit]}
            - {name: plain, user: {token: t, as: "", as-groups: [], as-user-extra: {}}}
            contexts:
            - {name: c, context: {cluster: lab, user: admin}}
            - {name: d, context: {cluster: direct, user: plain}}
            """, path: "/k")
        #expect(config.clusters["lab"]?.unsupported == ["proxy-url (connections go to the server directly)"])
        #expect(config.clusters["direct"]?.unsupported == [])
        #expect(config.users["admin"]?.unsupported == ["as (impersonation)", "as-uid (impersonation)",
                                                        "as-groups (impersonation)", "as-user-extra (impersonation)"])
        #expect(config.users["plain"]?.unsupported == [])
        let lines = try config.select().unsupportedLines
        #expect(lines == [
            #"warning: cluster "lab" uses proxy-url (connections go to the server directly), which this client does not support: it is not used"#,
            #"warning: user "admin" uses as (impersonation), which this client does not support: it is not used"#,
            #"warning: user "admin" uses as-uid (impersonation), which this client does not support: it is not used"#,
            #"warning: user "admin" uses as-groups (impersonation), which this client does not support: it is not used"#,
            #"warning: user "admin" uses as-user-extra (impersonation), which this client does not support: it is not used"#,
        ], "\(lines)")
        #expect(try config.select(Kubeconfig.Overrides(context: "d")).unsupportedLines == [])
    }

    @Test("Insecure with a CA is refused as kubectl refuses it; either flag replaces the cluster's three fields")
    func insecureWithCertificateAuthority() throws {
        var cluster = Kubeconfig.Cluster()
        cluster.certificateAuthority = "/k/ca.crt"
        var insecure = Kubeconfig.Cluster()
        insecure.insecureSkipTLSVerify = true
        var both = cluster
        both.insecureSkipTLSVerify = true
        var bothData = insecure
        bothData.certificateAuthorityData = [1, 2, 3]
        let refusals: [(Bool, String?, Kubeconfig.Cluster?)] = [
            (true, "/ca.crt", nil), (true, "/ca.crt", cluster), (false, nil, both), (false, nil, bothData),
        ]
        for (flag, ca, cluster) in refusals {
            let error = #expect(throws: Kubeconfig.LoadError.self) {
                try Kubeconfig.verification(insecureFlag: flag, certificateAuthorityFlag: ca, cluster: cluster)
            }
            #expect(error?.description == "specifying a root certificates file with the insecure flag is not allowed")
        }
        // client-go's overrides: the insecure flag drops the kubeconfig's CA, a CA flag its insecure.
        let flagInsecure = try Kubeconfig.verification(insecureFlag: true, certificateAuthorityFlag: nil, cluster: both)
        #expect(flagInsecure == Kubeconfig.Verification(insecureSkipTLSVerify: true))
        let flagCA = try Kubeconfig.verification(insecureFlag: false, certificateAuthorityFlag: "/ca.crt", cluster: bothData)
        #expect(flagCA == Kubeconfig.Verification(certificateAuthority: "/ca.crt"))
        let fromFile = try Kubeconfig.verification(insecureFlag: false, certificateAuthorityFlag: nil, cluster: cluster)
        #expect(fromFile == Kubeconfig.Verification(certificateAuthority: "/k/ca.crt"))
        #expect(try Kubeconfig.verification(insecureFlag: false, certificateAuthorityFlag: nil, cluster: nil) == Kubeconfig.Verification())
    }

    @Test("ExecCredential: token, certificate, expiry, the version check")
    func execCredential() throws {
        let v1 = "client.authentication.k8s.io/v1"
        let token = try ExecCredential(output: """
            {"kind":"ExecCredential","apiVersion":"\(v1)","status":{"token":"t0k","expirationTimestamp":"2026-11-28T12:00:00Z"}}
            """, apiVersion: v1)
        #expect(token.token == "t0k")
        #expect(token.expiration == 1_795_867_200)
        #expect(token.valid(at: 1_795_867_199))
        #expect(!token.valid(at: 1_795_867_200))
        let forever = try ExecCredential(output: #"{"kind":"ExecCredential","apiVersion":"\#(v1)","status":{"clientCertificateData":"C","clientKeyData":"K"}}"#, apiVersion: v1)
        #expect(forever.expiration == nil)
        #expect(forever.valid(at: Int.max))
        #expect(throws: ExecCredential.ParseError.self) {
            try ExecCredential(output: #"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","status":{"token":"t"}}"#, apiVersion: v1)
        }
        #expect(throws: ExecCredential.ParseError.self) {
            try ExecCredential(output: #"{"kind":"ExecCredential","apiVersion":"\#(v1)","status":{}}"#, apiVersion: v1)
        }
        #expect(throws: ExecCredential.ParseError.self) {
            try ExecCredential(output: "not json at all: [", apiVersion: v1)
        }
        #expect(throws: ExecCredential.ParseError.self) {
            try ExecCredential(output: #"{"kind":"ExecCredential","apiVersion":"\#(v1)","status":{"token":"t","expirationTimestamp":"tomorrow"}}"#, apiVersion: v1)
        }
        let info = ExecCredential.execInfo(apiVersion: v1, cluster: nil)
        #expect(info == #"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#)
    }

    @Test("RFC 3339 times", arguments: [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-28T12:00:00.123456Z", 1_795_867_200),
        ("2026-11-28T13:30:00+01:30", 1_795_867_200),
        ("2026-11-28T10:00:00-02:00", 1_795_867_200),
    ])
    func times(text: String, seconds: Int) {
        #expect(ExecCredential.rfc3339(text) == seconds)
    }

    @Test("Not RFC 3339", arguments: ["2026-11-28", "2026-11-28T12:00:00", "2026-13-01T00:00:00Z", "2026-11-28T12:00:00Zjunk", "2026-11-28T12:00:00.Z"])
    func notTimes(text: String) {
        #expect(ExecCredential.rfc3339(text) == nil)
    }
}
