import Foundation
import Testing
@testable import HTTP2
@testable import PortForward
import Reactor

@Suite("Token file: kube-apiserver's --token-auth-file CSV")
struct TokenFileTests {
    @Test("Quoted groups, comments, blank lines, CRLF, spaces before fields, an optional groups column")
    func reads() throws {
        let file = try TokenFile(csv: """
            # token,user,uid,groups

            alice-token,alice,1001,"dev,ops"\r
              bob-token, bob,1002
            "carol,token",carol,1003,"a ""quoted"" group, second"
            dave-token,dave,1004,
            """)
        #expect(file.count == 4)
        #expect(file.identity(token: "alice-token") == Identity(user: "alice", groups: ["dev", "ops"]))
        #expect(file.identity(token: "bob-token") == Identity(user: "bob"))
        #expect(file.identity(token: "carol,token") == Identity(user: "carol", groups: ["a \"quoted\" group", "second"]))
        #expect(file.identity(token: "dave-token") == Identity(user: "dave"))
        #expect(file.identity(token: "alice") == nil)
    }

    @Test("A quoted field may hold a line end: the record starts on its first line")
    func multiline() throws {
        let file = try TokenFile(csv: "t1,alice,1,\"dev,\nops\"\nt2,bob,2\n")
        #expect(file.identity(token: "t1") == Identity(user: "alice", groups: ["dev", "ops"]))
        #expect(file.identity(token: "t2") == Identity(user: "bob"))
        let error = #expect(throws: ConfigFileError.self) { try TokenFile(csv: "t1,alice,1,\"dev,\nops\"\n,bob,2\n", source: "t.csv") }
        #expect(error?.description == "t.csv:3: the token is empty")
    }

    @Test("Groups split at every comma, one followed by a combining mark too (a fuzz finding)")
    func combiningMark() throws {
        let file = try TokenFile(csv: "t,u,1,\"a,\u{489}b, c\"\n")
        #expect(file.identity(token: "t")?.groups == ["a", "\u{489}b", "c"])
        #expect(AccessControl.bearerToken("Bearer \u{301}x") == "\u{301}x")
    }

    @Test("A bad file: one line naming the line, never the token",
          arguments: [
            ("secret-1,alice\n", "tokens.csv:1: expected token,user,uid[,groups], found 2 fields"),
            ("# c\nsecret-1,alice,1,dev,ops\n", "tokens.csv:2: expected token,user,uid[,groups], found 5 fields (quote the groups: \"a,b\")"),
            (",alice,1\n", "tokens.csv:1: the token is empty"),
            ("secret-1,,1\n", "tokens.csv:1: the user name is empty"),
            ("secret-1,alice,1\n\nsecret-1,bob,2\n", "tokens.csv:3: the same token as line 1"),
            ("secret 1,alice,1\n", "tokens.csv:1: the token holds a space, a control character or a non-ASCII byte (it could not be sent in a header)"),
            ("secret-1,alice,1,\"dev\n", "tokens.csv:1: a quoted field is never closed"),
            ("secret-1,alice,1,\"dev\"x\n", "tokens.csv:1: text after a closing quote (a quote inside a quoted field is written \"\")"),
            ("secret-1,al\"ice,1\n", "tokens.csv:1: a quote inside an unquoted field (quote the whole field)"),
          ])
    func refused(_ text: String, _ expected: String) {
        let error = #expect(throws: ConfigFileError.self) { try TokenFile(csv: text, source: "tokens.csv") }
        #expect(error?.description == expected)
        #expect(error?.description.contains("secret") == false)
    }

    @Test("More than maximumEntries tokens is refused")
    func tooMany() {
        let text = (0...TokenFile.maximumEntries).map { "token-\($0),user\($0),\($0)" }.joined(separator: "\n")
        let error = #expect(throws: ConfigFileError.self) { try TokenFile(csv: text, source: "t") }
        #expect(error?.description == "t:\(TokenFile.maximumEntries + 1): more than \(TokenFile.maximumEntries) tokens")
    }
}

@Suite("Authorization rules: YAML allow list, fnmatch globs")
struct AccessRulesTests {
    static let example = """
        allow:
          - {user: alice, namespaces: [default]}
          - {group: dev, namespaces: [dev, staging], pods: ["web-*"]}
          - {user: root, namespaces: ["*"]}
          - {user: tester, namespaces: ["team-?"], pods: ["db-[0-9]"]}
        """

    @Test("Rules parse into subjects, namespaces and pods")
    func parses() throws {
        let rules = try AccessRules(yaml: Self.example)
        #expect(rules.rules == [
            .init(subject: .user("alice"), namespaces: ["default"]),
            .init(subject: .group("dev"), namespaces: ["dev", "staging"], pods: ["web-*"]),
            .init(subject: .user("root"), namespaces: ["*"]),
            .init(subject: .user("tester"), namespaces: ["team-?"], pods: ["db-[0-9]"]),
        ])
        #expect(try AccessRules(yaml: "allow:\n").rules.isEmpty)
    }

    @Test("Who may reach what: users, groups, globs, lists of a namespace and of every namespace")
    func allows() throws {
        let rules = try AccessRules(yaml: Self.example)
        let alice = Identity(user: "alice"), dev = Identity(user: "erin", groups: ["dev"])
        let root = Identity(user: "root"), tester = Identity(user: "tester"), nobody = Identity(user: "mallory", groups: ["ops"])
        #expect(rules.allows(alice, namespace: "default", pod: "web"))
        #expect(rules.allows(alice, namespace: "default", pod: nil), "no pods: restriction, so the namespace may be listed")
        #expect(!rules.allows(alice, namespace: "prod", pod: "web"))
        #expect(!rules.allows(alice, namespace: nil, pod: nil))
        #expect(rules.allows(dev, namespace: "staging", pod: "web-1"))
        #expect(!rules.allows(dev, namespace: "staging", pod: "db-1"))
        #expect(!rules.allows(dev, namespace: "dev", pod: nil), "a pods: restriction covers no list")
        #expect(!rules.allows(dev, namespace: "default", pod: "web-1"))
        #expect(rules.allows(root, namespace: "anything", pod: "x") && rules.allows(root, namespace: nil, pod: nil))
        #expect(rules.allows(tester, namespace: "team-a", pod: "db-7"))
        #expect(!rules.allows(tester, namespace: "team-ab", pod: "db-7"))
        #expect(!rules.allows(tester, namespace: "team-a", pod: "db-x"))
        #expect(!rules.allows(nobody, namespace: "default", pod: "web"))
        // A user named like a group is not in it, and the other way round.
        #expect(!rules.allows(Identity(user: "dev"), namespace: "dev", pod: "web-1"))
        #expect(!rules.allows(Identity(user: "x", groups: ["alice"]), namespace: "default", pod: "web"))
    }

    @Test("Glob matching is fnmatch's")
    func glob() {
        #expect(Glob.matches("web-*", "web-1") && Glob.matches("web-*", "web-"))
        #expect(!Glob.matches("web-*", "web") && !Glob.matches("web-*", "xweb-1"))
        #expect(Glob.matches("?b", "ab") && !Glob.matches("?b", "b"))
        #expect(Glob.matches("db-[0-9]", "db-3") && !Glob.matches("db-[0-9]", "db-a"))
        #expect(Glob.matches("web", "web") && !Glob.matches("web", "web2"))
        #expect(Glob.isValid("a[bc]") && !Glob.isValid("a[bc") && !Glob.isValid("a\\"))
    }

    @Test("A bad file: one line with the line number",
          arguments: [
            ("pods: []", "rules.yaml:1: unknown top-level field \"pods\" (known: allow)"),
            ("allow: {user: alice}", "rules.yaml:1: 'allow' must be a list"),
            ("allow:\n  - alice", "rules.yaml:2: rule #1: must be a mapping such as {user: alice, namespaces: [default]}, not the string \"alice\""),
            ("allow:\n  - {user: alice, namespace: [default]}", "rules.yaml:2: rule #1: unknown field \"namespace\" (known: user, group, namespaces, pods)"),
            ("allow:\n  - {user: alice}", "rules.yaml:2: rule #1: has no namespaces (a list such as [default], or [\"*\"] for all)"),
            ("allow:\n  - {namespaces: [a]}", "rules.yaml:2: rule #1: names no user and no group"),
            ("allow:\n  - {user: a, group: b, namespaces: [a]}", "rules.yaml:2: rule #1: names a user and a group: one rule is for one of them"),
            ("allow:\n  - {user: a, namespaces: []}", "rules.yaml:2: rule #1: namespaces must be a non-empty list of names or patterns such as [\"web-*\"], not a list"),
            ("allow:\n  - {user: a, namespaces: default}", "rules.yaml:2: rule #1: namespaces must be a non-empty list of names or patterns such as [\"web-*\"], not the string \"default\""),
            ("allow:\n  - {user: 42, namespaces: [a]}", "rules.yaml:2: rule #1: user must be a non-empty string, not the number 42"),
            ("allow:\n  - {user: a, namespaces: [a], pods: [\"web-[\"]}", "rules.yaml:2: rule #1: pods: \"web-[\" has an unclosed '[' or a trailing '\\'"),
            ("allow:\n  - {user: a, namespaces: [a]\n", "rules.yaml:3:1: not valid YAML: did not find expected ',' or '}' (while parsing a flow mapping at line 2)"),
          ])
    func refused(_ text: String, _ expected: String) {
        let error = #expect(throws: ConfigFileError.self) { try AccessRules(yaml: text, source: "rules.yaml") }
        #expect(error?.description == expected)
    }

    @Test("More than maximumRules rules is refused")
    func tooMany() {
        let text = "allow:\n" + String(repeating: "  - {user: a, namespaces: [a]}\n", count: AccessRules.maximumRules + 1)
        let error = #expect(throws: ConfigFileError.self) { try AccessRules(yaml: text, source: "r") }
        #expect(error?.description == "r: more than \(AccessRules.maximumRules) rules (\(AccessRules.maximumRules + 1))")
    }

    @Test("More than maximumPatterns names in all rules is refused, also when YAML aliases repeat one list (a small file that once took a minute and 1.3 GB to load)")
    func tooManyPatterns() {
        let names = (0..<20_000).map { "n\($0)" }.joined(separator: ",")
        let text = "allow:\n  - {user: u0, namespaces: &all [\(names)]}\n" + String(repeating: "  - {user: u, namespaces: *all}\n", count: 999)
        #expect(text.utf8.count < AccessRules.maximumFileSize)
        let error = #expect(throws: ConfigFileError.self) { try AccessRules(yaml: text, source: "r") }
        #expect(error?.description == "r:2: rule #1: more than \(AccessRules.maximumPatterns) namespace and pod names in all rules")
        let aliased = "allow:\n  - {user: u0, namespaces: &all [a, b]}\n" + String(repeating: "  - {user: u, namespaces: *all}\n", count: 999)
        #expect((try? AccessRules(yaml: aliased, source: "r"))?.rules.count == 1_000)
    }
}

@Suite("Access control: who asks, and whether they may")
struct AccessControlTests {
    static let tokens = try! TokenFile(csv: "alice-token,alice,1,dev\nbob-token,bob,2\n")
    static let rules = try! AccessRules(yaml: "allow:\n  - {user: alice, namespaces: [default]}\n")

    @Test("Bearer tokens as kube-apiserver reads them")
    func bearer() {
        #expect(AccessControl.bearerToken("Bearer abc") == "abc")
        #expect(AccessControl.bearerToken("bearer abc") == "abc")
        #expect(AccessControl.bearerToken("  Bearer abc  ") == "abc")
        #expect(AccessControl.bearerToken("Basic YWxpY2U6eA==") == nil)
        #expect(AccessControl.bearerToken("Bearer") == nil)
        #expect(AccessControl.bearerToken("Bearer  abc") == nil, "an empty token between two spaces")
        #expect(AccessControl.bearerToken(nil) == nil)
    }

    @Test("Token, then certificate, then anonymous; a bad token is 401 even with a certificate")
    func authenticate() throws {
        let access = AccessControl(tokens: Self.tokens, clientCertificates: true)
        let certificate = Identity(user: "carol", groups: ["ops"])
        #expect(try access.authenticate(authorization: "Bearer alice-token", certificate: certificate).get()
                == Identity(user: "alice", groups: ["dev", "system:authenticated"]))
        #expect(try access.authenticate(authorization: nil, certificate: certificate).get()
                == Identity(user: "carol", groups: ["ops", "system:authenticated"]))
        #expect(try access.authenticate(authorization: "Basic x", certificate: certificate).get().user == "carol")
        #expect(throws: Refusal.self) { try access.authenticate(authorization: "Bearer wrong", certificate: certificate).get() }
        #expect(throws: Refusal.self) { try access.authenticate(authorization: nil, certificate: nil).get() }
        // Nothing configured: anonymous, and everything allowed.
        let open = AccessControl()
        #expect(open.isOpen)
        #expect(try open.authenticate(authorization: "Bearer alice-token", certificate: nil).get() == AccessControl.anonymous)
        #expect(open.check(authorization: nil, certificate: nil, .portForward(namespace: "prod", pod: "web")) == nil)
    }

    @Test("Tokens without rules: every authenticated user may (AlwaysAllow); anonymous is 401")
    func alwaysAllow() {
        let access = AccessControl(tokens: Self.tokens)
        #expect(access.check(authorization: "Bearer bob-token", certificate: nil, .portForward(namespace: "prod", pod: "web")) == nil)
        #expect(access.check(authorization: nil, certificate: nil, .portForward(namespace: "prod", pod: "web"))?.status == 401)
        #expect(access.check(authorization: "Bearer nope", certificate: nil, .nonResource(verb: "get", path: "/version"))?.status == 401)
    }

    @Test("Rules without authentication: anonymous is checked as system:anonymous")
    func rulesOnly() {
        let access = AccessControl(rules: try! AccessRules(yaml: "allow:\n  - {group: \"system:unauthenticated\", namespaces: [public]}\n"))
        #expect(access.check(authorization: nil, certificate: nil, .portForward(namespace: "public", pod: "web")) == nil)
        let refusal = access.check(authorization: nil, certificate: nil, .portForward(namespace: "prod", pod: "web"))
        #expect(refusal?.text == "pods \"web\" is forbidden: User \"system:anonymous\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"prod\"")
    }

    @Test("The 403's message has kube-apiserver's shape, for a pod, a list and every namespace; the 401's and 403's bodies are Status JSON")
    func messages() throws {
        let access = AccessControl(tokens: Self.tokens, rules: Self.rules)
        let forward = access.check(authorization: "Bearer alice-token", certificate: nil, .portForward(namespace: "prod", pod: "web"))
        #expect(forward?.status == 403 && forward?.reasonPhrase == "Forbidden")
        #expect(forward?.text == #"pods "web" is forbidden: User "alice" cannot create resource "pods/portforward" in API group "" in the namespace "prod""#)
        #expect(forward?.contentType == "application/json")
        #expect(forward?.body == #"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"web\" is forbidden: User \"alice\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"prod\"","reason":"Forbidden","details":{"name":"web","kind":"pods"},"code":403}"# + "\n")
        let list = access.check(authorization: "Bearer alice-token", certificate: nil, KubernetesAPI.attributes(method: "GET", target: "/api/v1/namespaces/prod/pods?limit=500"))
        #expect(list?.text == #"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "prod""#)
        let all = access.check(authorization: "Bearer alice-token", certificate: nil, KubernetesAPI.attributes(method: "GET", target: "/api/v1/pods"))
        #expect(all?.text == #"pods is forbidden: User "alice" cannot list resource "pods" in API group "" at the cluster scope"#)
        let get = access.check(authorization: "Bearer bob-token", certificate: nil, KubernetesAPI.attributes(method: "GET", target: "/api/v1/namespaces/default/pods/web"))
        #expect(get?.text == #"pods "web" is forbidden: User "bob" cannot get resource "pods" in API group "" in the namespace "default""#)
        #expect(access.check(authorization: "Bearer bob-token", certificate: nil, KubernetesAPI.attributes(method: "GET", target: "/version")) == nil)
        let unauthorized = try #require(access.check(authorization: "Bearer nope", certificate: nil, .portForward(namespace: "default", pod: "web")))
        #expect(unauthorized.status == 401 && unauthorized.reasonPhrase == "Unauthorized" && unauthorized.text == "Unauthorized")
        #expect(unauthorized.body == #"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"# + "\n")
        // A name with a quote or a line end stays one line, quoted as Go's %q.
        let odd = Forbidden(user: "a\"b\nc", verb: "get", resource: "pods", namespace: "ns", name: "x")
        #expect(odd.message == #"pods "x" is forbidden: User "a\"b\nc" cannot get resource "pods" in API group "" in the namespace "ns""#)
    }

    @Test("Request attributes: port-forward is create whatever the method; get, list, discovery")
    func attributes() {
        #expect(KubernetesAPI.attributes(method: "GET", target: "/api/v1/namespaces/a/pods/b/portforward?ports=80") == .portForward(namespace: "a", pod: "b"))
        #expect(KubernetesAPI.attributes(method: "POST", target: "/api/v1/namespaces/a/pods/b/portforward") == .portForward(namespace: "a", pod: "b"))
        #expect(KubernetesAPI.attributes(method: "HEAD", target: "/api/v1/namespaces/a/pods/b") == .resource(verb: "get", resource: "pods", namespace: "a", name: "b"))
        #expect(KubernetesAPI.attributes(method: "GET", target: "/api/v1/namespaces/a/pods") == .resource(verb: "list", resource: "pods", namespace: "a", name: nil))
        #expect(KubernetesAPI.attributes(method: "GET", target: "/api/v1/pods") == .resource(verb: "list", resource: "pods", namespace: nil, name: nil))
        #expect(KubernetesAPI.attributes(method: "GET", target: "/api") == .nonResource(verb: "get", path: "/api"))
    }
}

@Suite("The listen rule: beyond loopback, TLS and authentication or --insecure")
struct ListenRuleTests {
    @Test("Loopback is fine; anything else refuses, or warns with --insecure")
    func rule() throws {
        let loopback = try #require(SocketAddress(ip: "127.0.0.1", port: 10250))
        let loopback6 = try #require(SocketAddress(ip: "::1", port: 10250))
        let any = try #require(SocketAddress(ip: "0.0.0.0", port: 10250))
        #expect(ListenRule.check(listen: loopback, tls: false, authenticates: false, insecure: false) == .fine)
        #expect(ListenRule.check(listen: loopback6, tls: false, authenticates: false, insecure: false) == .fine)
        #expect(ListenRule.check(listen: any, tls: true, authenticates: true, insecure: false) == .fine)
        #expect(ListenRule.check(listen: any, tls: false, authenticates: true, insecure: false)
                == .refuse("error: refusing to listen on 0.0.0.0:10250 without TLS (--tls-cert-file): a non-loopback address needs TLS and authentication (--insecure to listen anyway)"))
        #expect(ListenRule.check(listen: any, tls: false, authenticates: false, insecure: false)
                == .refuse("error: refusing to listen on 0.0.0.0:10250 without TLS (--tls-cert-file) and authentication (--token-auth-file or --client-ca-file): a non-loopback address needs TLS and authentication (--insecure to listen anyway)"))
        guard case .warn(let line) = ListenRule.check(listen: any, tls: false, authenticates: false, insecure: true) else {
            Issue.record("--insecure should warn")
            return
        }
        #expect(line.hasPrefix("warning: listening on 0.0.0.0:10250 without TLS"))
        #expect(ListenRule.isLoopback("127.1.2.3") && ListenRule.isLoopback("::ffff:127.0.0.1"))
        #expect(!ListenRule.isLoopback("10.0.0.1") && !ListenRule.isLoopback("::") && !ListenRule.isLoopback("128.0.0.1"))
    }
}

@Suite("Credentials stay out of messages")
struct CredentialMessageTests {
    @Test("nghttp2's invalid-header line keeps the name and the value's length, not the value")
    func headerValue() {
        let line = "Invalid HTTP header field was received: frame type: 1, stream: 1, name: [Authorization], value: [Bearer s3cret]"
        #expect(withoutHeaderValue(line) == "Invalid HTTP header field was received: frame type: 1, stream: 1, name: [Authorization], value: 13 bytes, not shown")
        #expect(withoutHeaderValue("stream 1: closed") == "stream 1: closed")
        // The marker inside the value: before, everything up to its last occurrence was shown,
        // the start of the token with it.
        let tricky = "Invalid HTTP header field was received: frame type: 1, stream: 1, name: [Authorization], value: [Bearer s3cret, value: [x]"
        let shown = withoutHeaderValue(tricky)
        #expect(!shown.contains("s3cret") && shown.hasSuffix("not shown"), "\(shown)")
        #expect(shown == "Invalid HTTP header field was received: frame type: 1, stream: 1, header of 56 bytes, not shown", "\(shown)")
    }

    @Test("The client shows a Status body's message, and any other body as it is")
    func statusMessage() {
        let forbidden = Refusal.forbidden(Forbidden(user: "alice", verb: "create", resource: "pods/portforward", namespace: "prod", name: "web"))
        #expect(Refusal.message(body: forbidden.body) == forbidden.text)
        #expect(Refusal.message(body: Refusal.unauthorized.body) == "Unauthorized")
        #expect(Refusal.message(body: "pod \"default/web\" not found\n") == "pod \"default/web\" not found")
    }
}
