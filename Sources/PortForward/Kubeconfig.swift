import Reactor
import WebSocket
import Yams
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A kubeconfig file as kubectl reads it (client-go's `clientcmd`): clusters, users and contexts
/// by name, and the current context. Values only: reading the files, running an exec plugin and
/// reading a token file are the caller's. Paths in a file are taken relative to that file's
/// directory, as client-go resolves them.
public struct Kubeconfig: Equatable, Sendable {
    public struct Cluster: Equatable, Sendable {
        public var server: String?
        public var certificateAuthority: String?
        public var certificateAuthorityData: [UInt8]?
        public var insecureSkipTLSVerify = false
        public var tlsServerName: String?
        /// Fields this client does not implement (`proxy-url`), each said in one line at start
        /// rather than ignored without a word.
        public var unsupported: [String] = []
        public init() {}
    }

    /// An exec credential plugin (`client.authentication.k8s.io/v1` or `v1beta1`).
    public struct Exec: Equatable, Sendable {
        public var apiVersion: String
        public var command: String
        public var args: [String] = []
        public var env: [Pair] = []
        public var provideClusterInfo = false
        public var installHint: String?
    }

    public struct Pair: Equatable, Sendable {
        public var name: String
        public var value: String
    }

    public struct User: Equatable, Sendable {
        public var token: String?
        public var tokenFile: String?
        public var clientCertificate: String?
        public var clientCertificateData: [UInt8]?
        public var clientKey: String?
        public var clientKeyData: [UInt8]?
        public var exec: Exec?
        /// The mechanisms this client does not implement that the user names (`auth-provider`,
        /// `username`/`password`, impersonation): each said in one line rather than ignored.
        public var unsupported: [String] = []
        public init() {}
    }

    public struct Context: Equatable, Sendable {
        public var cluster: String
        public var user: String
        public var namespace: String?
    }

    public var clusters: [String: Cluster] = [:]
    public var users: [String: User] = [:]
    public var contexts: [String: Context] = [:]
    public var currentContext: String?

    public init() {}

    public struct LoadError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// One file's text; `path` names it in errors and anchors its relative paths.
    public init(yaml text: String, path: String) throws {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        func fail(_ what: String) -> LoadError { LoadError(description: "kubeconfig \(path): \(what)") }
        func resolve(_ file: String?) -> String? {
            guard let file, !file.isEmpty else { return nil }
            if file.hasPrefix("/") { return file }
            return (directory.isEmpty ? "/" : directory + "/") + file
        }
        func data(_ node: Node?, _ field: String) throws -> [UInt8]? {
            guard let text = node?.string, !text.isEmpty else { return nil }
            guard let bytes = Base64.decode(text.filter { !$0.isWhitespace }) else { throw fail("\(field) is not base64") }
            return bytes
        }
        let document: Node?
        do { document = try NestingDepth.compose(text) } catch let error as NestingDepth.TooDeep {
            throw LoadError(description: "kubeconfig \(path):\(error.line): lists and mappings nested more than \(NestingDepth.limit) deep (a kubeconfig needs 5)")
        } catch {
            throw fail("not valid YAML: \(String(describing: error).split(separator: "\n").joined(separator: " "))")
        }
        guard let document else { return }
        guard case .mapping(let root) = document else { throw fail("expected a mapping at the top") }
        currentContext = root["current-context"]?.string.flatMap { $0.isEmpty ? nil : $0 }

        func named(_ key: String, _ inner: String) throws -> [(String, Node.Mapping)] {
            guard let list = root[key] else { return [] }
            if case .scalar = list, list.tagName == .null { return [] }
            guard case .sequence(let entries) = list else { throw fail("'\(key)' must be a list") }
            var result: [(String, Node.Mapping)] = []
            for entry in entries {
                guard case .mapping(let mapping) = entry, let name = mapping["name"]?.string, !name.isEmpty else {
                    throw fail("each entry of '\(key)' needs a name")
                }
                if let body = mapping[inner] {
                    if case .mapping(let inner) = body { result.append((name, inner)); continue }
                    if case .scalar = body, body.tagName == .null { result.append((name, Node.Mapping([]))); continue }
                    throw fail("\(key) \(name): '\(inner)' must be a mapping")
                }
                result.append((name, Node.Mapping([])))
            }
            return result
        }

        // Within one file the first entry of a name counts, as the later merge does across files.
        for (name, body) in try named("clusters", "cluster") where clusters[name] == nil {
            var cluster = Cluster()
            cluster.server = body["server"]?.string
            cluster.certificateAuthority = resolve(body["certificate-authority"]?.string)
            cluster.certificateAuthorityData = try data(body["certificate-authority-data"], "cluster \(name): certificate-authority-data")
            cluster.insecureSkipTLSVerify = body["insecure-skip-tls-verify"]?.bool ?? false
            cluster.tlsServerName = body["tls-server-name"]?.string
            if Self.isSet(body["proxy-url"]) {
                cluster.unsupported.append("proxy-url (connections go to the server directly)")
            }
            clusters[name] = cluster
        }
        for (name, body) in try named("users", "user") where users[name] == nil {
            var user = User()
            user.token = body["token"]?.string.flatMap { $0.isEmpty ? nil : $0 }
            user.tokenFile = resolve(body["tokenFile"]?.string)
            user.clientCertificate = resolve(body["client-certificate"]?.string)
            user.clientCertificateData = try data(body["client-certificate-data"], "user \(name): client-certificate-data")
            user.clientKey = resolve(body["client-key"]?.string)
            user.clientKeyData = try data(body["client-key-data"], "user \(name): client-key-data")
            if let exec = body["exec"], case .mapping(let spec) = exec {
                guard let command = spec["command"]?.string, !command.isEmpty else { throw fail("user \(name): exec needs a command") }
                let version = spec["apiVersion"]?.string ?? ""
                guard ExecCredential.apiVersions.contains(version) else {
                    throw fail("user \(name): exec apiVersion \"\(version)\" is not one of \(ExecCredential.apiVersions.joined(separator: ", "))")
                }
                // A command with a slash but not absolute is relative to the file, as client-go does.
                let resolved = command.contains("/") && !command.hasPrefix("/") ? resolve(command)! : command
                var plugin = Exec(apiVersion: version, command: resolved)
                if case .sequence(let args)? = spec["args"] { plugin.args = args.compactMap(\.string) }
                if case .sequence(let env)? = spec["env"] {
                    for entry in env {
                        guard let name = entry["name"]?.string else { throw fail("user \(name): exec env entries need a name") }
                        plugin.env.append(Pair(name: name, value: entry["value"]?.string ?? ""))
                    }
                }
                plugin.provideClusterInfo = spec["provideClusterInfo"]?.bool ?? false
                plugin.installHint = spec["installHint"]?.string
                user.exec = plugin
            }
            if body["auth-provider"] != nil {
                user.unsupported.append("auth-provider (removed from kubectl in 1.26; use an exec plugin)")
            } else if body["username"] != nil || body["password"] != nil {
                user.unsupported.append("username/password (basic authentication)")
            }
            // Impersonation: kubectl would send Impersonate-* headers and act as someone else;
            // this client would act as the user itself.
            for field in ["as", "as-uid", "as-groups", "as-user-extra"] where Self.isSet(body[field]) {
                user.unsupported.append("\(field) (impersonation)")
            }
            users[name] = user
        }
        for (name, body) in try named("contexts", "context") where contexts[name] == nil {
            contexts[name] = Context(cluster: body["cluster"]?.string ?? "", user: body["user"]?.string ?? "",
                                     namespace: body["namespace"]?.string.flatMap { $0.isEmpty ? nil : $0 })
        }
    }

    /// Whether a field is given a value: client-go reads an empty string, list or mapping (or
    /// null) as unset.
    private static func isSet(_ node: Node?) -> Bool {
        switch node {
        case nil: return false
        case .scalar(let scalar)?: return node?.tagName != .null && !scalar.string.isEmpty
        case .sequence(let list)?: return !list.isEmpty
        case .mapping(let map)?: return !map.isEmpty
        }
    }

    /// Several files merged by client-go's rules: the first file to set a name (cluster, user,
    /// context) wins and later files never change it; the first file to set `current-context`
    /// wins.
    public static func merged(_ files: [Kubeconfig]) -> Kubeconfig {
        var result = Kubeconfig()
        for file in files {
            result.clusters.merge(file.clusters) { first, _ in first }
            result.users.merge(file.users) { first, _ in first }
            result.contexts.merge(file.contexts) { first, _ in first }
            if result.currentContext == nil { result.currentContext = file.currentContext }
        }
        return result
    }

    /// Which files to read, as kubectl chooses them: `--kubeconfig` alone (it must exist), else
    /// every path in `KUBECONFIG` (colon-separated, empty entries and repeats dropped; missing
    /// files are skipped), else `~/.kube/config` (skipped if missing).
    public static func paths(explicit: String?, environment: [String: String]) -> (paths: [String], mustExist: Bool) {
        if let explicit, !explicit.isEmpty { return ([explicit], true) }
        if let list = environment["KUBECONFIG"], !list.isEmpty {
            var seen = Set<String>()
            let paths = list.split(separator: ":").map(String.init).filter { !$0.isEmpty && seen.insert($0).inserted }
            return (paths, false)
        }
        guard let home = environment["HOME"], !home.isEmpty else { return ([], false) }
        return ([home + "/.kube/config"], false)
    }

    /// What `--context`, `--cluster`, `--user` and `-n` select.
    public struct Overrides: Sendable {
        public var context: String?
        public var cluster: String?
        public var user: String?
        public var namespace: String?
        public init(context: String? = nil, cluster: String? = nil, user: String? = nil, namespace: String? = nil) {
            self.context = context
            self.cluster = cluster
            self.user = user
            self.namespace = namespace
        }
    }

    /// The server, TLS settings and credentials a command uses, chosen as kubectl chooses them.
    public struct Selection: Equatable, Sendable {
        public var context: String?
        public var clusterName: String
        public var cluster: Cluster
        public var userName: String?
        public var user: User
        /// `-n`, else the context's, else `default`.
        public var namespace: String

        /// One warning line for each field the chosen cluster and user set that this client
        /// does not implement, printed at start.
        public var unsupportedLines: [String] {
            cluster.unsupported.map { "warning: cluster \"\(clusterName)\" uses \($0), which this client does not support: it is not used" }
                + user.unsupported.map { "warning: user \"\(userName ?? "")\" uses \($0), which this client does not support: it is not used" }
        }
    }

    public func select(_ overrides: Overrides = Overrides()) throws -> Selection {
        let contextName = overrides.context ?? currentContext
        var context: Context?
        if let contextName {
            guard let found = contexts[contextName] else {
                throw LoadError(description: "context \"\(contextName)\" does not exist")
            }
            context = found
        }
        guard let clusterName = overrides.cluster ?? context?.cluster, !clusterName.isEmpty else {
            throw LoadError(description: contextName == nil
                ? "no context is set (current-context is empty) and no --cluster was given"
                : "context \"\(contextName!)\" names no cluster")
        }
        guard let cluster = clusters[clusterName] else {
            throw LoadError(description: "cluster \"\(clusterName)\" does not exist")
        }
        guard let server = cluster.server, !server.isEmpty else {
            throw LoadError(description: "cluster \"\(clusterName)\" has no server")
        }
        guard server.hasPrefix("https://") || server.hasPrefix("http://") else {
            throw LoadError(description: "cluster \"\(clusterName)\": server \"\(server)\" is not an http:// or https:// URL")
        }
        var user = User()
        let userName = overrides.user ?? context?.user
        if let userName, !userName.isEmpty {
            guard let found = users[userName] else { throw LoadError(description: "user \"\(userName)\" does not exist") }
            user = found
        }
        return Selection(context: contextName, clusterName: clusterName, cluster: cluster,
                         userName: userName.flatMap { $0.isEmpty ? nil : $0 }, user: user,
                         namespace: overrides.namespace ?? context?.namespace ?? "default")
    }
}

extension Kubeconfig {
    /// How a command checks the server's certificate: insecure, or against a CA (a file, or
    /// data), or against the system's CAs when neither is set.
    public struct Verification: Equatable, Sendable {
        public var insecureSkipTLSVerify = false
        public var certificateAuthority: String?
        public var certificateAuthorityData: [UInt8]?
    }

    /// client-go's words (`validateClusterInfo`), which kubectl prints.
    public static let insecureWithRootCertificates = "specifying a root certificates file with the insecure flag is not allowed"

    /// The flags over the chosen cluster's fields, as client-go merges them: either flag
    /// (`--insecure-skip-tls-verify`, `--certificate-authority`) replaces all three of the
    /// cluster's, so the insecure flag over a kubeconfig with a CA is insecure without one, and a
    /// CA flag over an insecure cluster is checked. Insecure together with a CA, from the flags
    /// or from one cluster, is refused, as kubectl refuses it: one of the two would be ignored.
    public static func verification(insecureFlag: Bool, certificateAuthorityFlag: String?,
                                    cluster: Cluster?) throws -> Verification {
        let flagCA = certificateAuthorityFlag.flatMap { $0.isEmpty ? nil : $0 }
        var result = Verification()
        if insecureFlag || flagCA != nil {
            result.insecureSkipTLSVerify = insecureFlag
            result.certificateAuthority = flagCA
        } else if let cluster {
            result.insecureSkipTLSVerify = cluster.insecureSkipTLSVerify
            result.certificateAuthority = cluster.certificateAuthority
            result.certificateAuthorityData = cluster.certificateAuthorityData
        }
        if result.insecureSkipTLSVerify && (result.certificateAuthority != nil || result.certificateAuthorityData != nil) {
            throw LoadError(description: insecureWithRootCertificates)
        }
        return result
    }
}

/// What an exec credential plugin prints (`ExecCredential`), and what it is given.
public struct ExecCredential: Equatable, Sendable {
    public static let apiVersions = ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"]

    public var token: String?
    public var clientCertificateData: String?
    public var clientKeyData: String?
    /// Seconds since the epoch; nil: valid for as long as the process runs.
    public var expiration: Int?

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// The plugin's standard output; `apiVersion` is the one the kubeconfig asked for, and the
    /// output must say the same (client-go refuses a mismatch).
    public init(output: String, apiVersion: String) throws {
        let node: Node?
        do { node = try NestingDepth.compose(output) } catch is NestingDepth.TooDeep {
            throw ParseError(description: "the plugin's output nests lists and mappings more than \(NestingDepth.limit) deep")
        } catch {
            throw ParseError(description: "the plugin's output is not JSON")
        }
        guard case .mapping(let root)? = node else { throw ParseError(description: "the plugin's output is not a JSON object") }
        guard root["kind"]?.string == "ExecCredential" else { throw ParseError(description: "the plugin's output is not an ExecCredential") }
        guard let version = root["apiVersion"]?.string, version == apiVersion else {
            throw ParseError(description: "the plugin answered with apiVersion \"\(root["apiVersion"]?.string ?? "")\", not \"\(apiVersion)\"")
        }
        guard case .mapping(let status)? = root["status"] else { throw ParseError(description: "the ExecCredential has no status") }
        token = status["token"]?.string.flatMap { $0.isEmpty ? nil : $0 }
        clientCertificateData = status["clientCertificateData"]?.string
        clientKeyData = status["clientKeyData"]?.string
        if token == nil, clientCertificateData == nil || clientKeyData == nil {
            throw ParseError(description: "the ExecCredential has neither a token nor a client certificate and key")
        }
        if let stamp = status["expirationTimestamp"]?.string, !stamp.isEmpty {
            guard let seconds = Self.rfc3339(stamp) else {
                throw ParseError(description: "expirationTimestamp \"\(stamp.prefix(64))\" is not an RFC 3339 time")
            }
            expiration = seconds
        }
    }

    /// Whether the credential may still be used at `now` (seconds since the epoch).
    public func valid(at now: Int) -> Bool { expiration.map { now < $0 } ?? true }

    /// `KUBERNETES_EXEC_INFO`: the request the plugin reads (never interactive here).
    public static func execInfo(apiVersion: String, cluster: Kubeconfig.Cluster?) -> String {
        var spec: [(String, JSONValue)] = [("interactive", .bool(false))]
        if let cluster {
            var info: [(String, JSONValue)] = [("server", .string(cluster.server ?? ""))]
            if let name = cluster.tlsServerName { info.append(("tls-server-name", .string(name))) }
            if cluster.insecureSkipTLSVerify { info.append(("insecure-skip-tls-verify", .bool(true))) }
            if let data = cluster.certificateAuthorityData {
                info.append(("certificate-authority-data", .string(data.withUnsafeBytes { Base64.encode(Array($0)) })))
            }
            spec.append(("cluster", .object(info)))
        }
        return JSONValue.object([("kind", .string("ExecCredential")), ("apiVersion", .string(apiVersion)),
                                 ("spec", .object(spec))]).serialized
    }

    /// `2026-11-28T12:00:00Z`, with optional fractional seconds and a numeric offset.
    static func rfc3339(_ text: String) -> Int? {
        let bytes = Array(text.utf8)
        func number(_ from: Int, _ count: Int) -> Int? {
            guard from + count <= bytes.count else { return nil }
            var value = 0
            for byte in bytes[from..<from + count] {
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            return value
        }
        guard bytes.count >= 20, bytes[4] == 45, bytes[7] == 45, bytes[10] == 84 || bytes[10] == 116,
              bytes[13] == 58, bytes[16] == 58,
              let year = number(0, 4), let month = number(5, 2), let day = number(8, 2),
              let hour = number(11, 2), let minute = number(14, 2), let second = number(17, 2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61 else { return nil }
        var index = 19
        if index < bytes.count, bytes[index] == 46 {
            index += 1
            let start = index
            while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 { index += 1 }
            guard index > start else { return nil }
        }
        guard index < bytes.count else { return nil }
        var offset = 0
        if bytes[index] == 90 || bytes[index] == 122 {
            index += 1
        } else if bytes[index] == 43 || bytes[index] == 45 {
            guard let hours = number(index + 1, 2), index + 3 < bytes.count, bytes[index + 3] == 58,
                  let minutes = number(index + 4, 2) else { return nil }
            offset = (hours * 60 + minutes) * 60 * (bytes[index] == 43 ? 1 : -1)
            index += 6
        } else {
            return nil
        }
        guard index == bytes.count else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        return Int(timegm(&parts)) - offset
    }
}

extension Kubeconfig {
    /// A kubeconfig file is read whole; larger ones are refused.
    public static let maximumFileSize = 4 << 20

    /// The files `paths(explicit:environment:)` chooses, read and merged. A missing file in
    /// `KUBECONFIG` or the default path is skipped; a missing `--kubeconfig` is an error. No file
    /// at all gives an empty configuration (then `--server` must say where to go).
    public static func load(explicit: String?, environment: [String: String]) throws -> Kubeconfig {
        let (paths, mustExist) = paths(explicit: explicit, environment: environment)
        var files: [Kubeconfig] = []
        for path in paths {
            let text: String
            do {
                text = try ConfigFile.read(path, kind: "kubeconfig", maximumSize: maximumFileSize)
            } catch let error as SystemError where error.errno == ENOENT && !mustExist {
                continue
            } catch let error as ConfigFileError {
                throw LoadError(description: error.description)
            } catch {
                throw LoadError(description: "\(error)")
            }
            files.append(try Kubeconfig(yaml: text, path: path))
        }
        return merged(files)
    }
}
