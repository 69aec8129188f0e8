import Reactor

/// Who is asking, and whether they may: authentication (a bearer token from the token file, else
/// the connection's client certificate, else anonymous) and authorization (the rules), as a
/// value with no I/O. The relay asks it in two places only: `Relay.apiResponse` for API requests
/// and `Relay.authorizePortForward` for port-forward targets, which every front end calls.
///
/// Configured | anonymous | a known token or certificate | no rules file
/// -----------|-----------|------------------------------|--------------
/// nothing (today's default) | allowed | (tokens are ignored) | everything allowed
/// token file or client CA | `401` | checked against the rules | every authenticated user allowed (kube-apiserver's AlwaysAllow)
/// rules only | checked as `system:anonymous` | (tokens are ignored) | -
public struct AccessControl: Sendable {
    /// `--token-auth-file`.
    public var tokens: TokenFile?
    /// `--client-ca-file`: connections may carry a certificate's identity.
    public var clientCertificates = false
    /// `--authorization-file`; nil: whoever is authenticated may do anything.
    public var rules: AccessRules?

    public init(tokens: TokenFile? = nil, clientCertificates: Bool = false, rules: AccessRules? = nil) {
        self.tokens = tokens
        self.clientCertificates = clientCertificates
        self.rules = rules
    }

    /// Whether a request must say who it is (else `401`).
    public var authenticates: Bool { tokens != nil || clientCertificates }

    /// Whether anything is checked at all (the relay skips the work otherwise).
    public var isOpen: Bool { !authenticates && rules == nil }

    /// kube-apiserver's names for a request nobody vouches for, and for one somebody does.
    public static let anonymous = Identity(user: "system:anonymous", groups: ["system:unauthenticated"])
    public static let authenticatedGroup = "system:authenticated"

    /// What a request asks to do, in kube-apiserver's terms (its `authorizer.Attributes`).
    public enum Attributes: Equatable, Sendable {
        /// `verb` on `resource` (`pods`, `pods/portforward`): `namespace` nil means every
        /// namespace, `name` nil every object (a list).
        case resource(verb: String, resource: String, namespace: String?, name: String?)
        /// Discovery (`/version`, `/api`, ...): any authenticated user may.
        case nonResource(verb: String, path: String)

        /// Port-forwarding to a pod: `create pods/portforward`, whatever the method. kubectl's SPDY
        /// upgrade is a POST (create); the WebSocket upgrades are GETs, which kube-apiserver 1.35
        /// (feature gate `AuthorizePodWebsocketUpgradeCreatePermission`, on by default) also
        /// checks as `create`, closing the gap by which `get` sufficed; we follow it.
        public static func portForward(namespace: String, pod: String) -> Attributes {
            .resource(verb: "create", resource: "pods/portforward", namespace: namespace, name: pod)
        }
    }

    /// The request's identity, or the `401` for it. `authorization` is the request's
    /// `Authorization` header; `certificate` the connection's client-certificate identity.
    public func authenticate(authorization: String?, certificate: Identity?) -> Result<Identity, Refusal> {
        if let tokens, let token = Self.bearerToken(authorization) {
            // A token that is not in the file is refused even on a connection with a certificate:
            // a request says who it is once, and a wrong claim is not silently replaced.
            guard var identity = tokens.identity(token: token) else { return .failure(.unauthorized) }
            identity.groups.append(Self.authenticatedGroup)
            return .success(identity)
        }
        if clientCertificates, var identity = certificate {
            identity.groups.append(Self.authenticatedGroup)
            return .success(identity)
        }
        return authenticates ? .failure(.unauthorized) : .success(Self.anonymous)
    }

    /// nil if `identity` may; else the `403` saying what it may not.
    public func authorize(_ identity: Identity, _ attributes: Attributes) -> Refusal? {
        guard let rules else { return nil }
        switch attributes {
        case .nonResource:
            return nil
        case .resource(let verb, let resource, let namespace, let name):
            if rules.allows(identity, namespace: namespace, pod: name) { return nil }
            return .forbidden(Forbidden(user: identity.user, verb: verb, resource: resource, namespace: namespace, name: name))
        }
    }

    /// Both: nil if the request may go on, else the `401` or `403`.
    public func check(authorization: String?, certificate: Identity?, _ attributes: Attributes) -> Refusal? {
        if isOpen { return nil }
        switch authenticate(authorization: authorization, certificate: certificate) {
        case .failure(let refusal): return refusal
        case .success(let identity): return authorize(identity, attributes)
        }
    }

    /// The token of `Authorization: Bearer TOKEN`, as kube-apiserver reads it (the scheme in any
    /// case, the value trimmed); nil for no header, another scheme or an empty token (the
    /// request is then not a token request at all, as for kube-apiserver).
    static func bearerToken(_ header: String?) -> String? {
        // As bytes: a space followed by a combining mark is one Character.
        guard let header else { return nil }
        let bytes = Array(header.utf8)
        let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 }
        guard let first = bytes.firstIndex(where: { !blank($0) }), let last = bytes.lastIndex(where: { !blank($0) }) else { return nil }
        let parts = bytes[first...last].split(separator: 0x20, maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, String(decoding: parts[0], as: UTF8.self).lowercased() == "bearer", !parts[1].isEmpty else { return nil }
        return String(decoding: parts[1], as: UTF8.self)
    }
}

/// What a `403` says, in kube-apiserver's words (`forbiddenMessage` and `NewForbidden`):
/// `pods "web" is forbidden: User "alice" cannot create resource "pods/portforward" in API group ""
/// in the namespace "prod"`.
public struct Forbidden: Equatable, Sendable {
    public var user: String
    public var verb: String
    /// With its subresource: `pods/portforward`.
    public var resource: String
    public var namespace: String?
    public var name: String?

    public init(user: String, verb: String, resource: String, namespace: String?, name: String?) {
        self.user = user
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.name = name
    }

    /// The resource without its subresource, as the message's subject names it (`pods`).
    public var kind: String { String(resource.prefix { $0 != "/" }) }

    public var message: String {
        // Names come from the request path (or a certificate): quoted as Go's %q would, at most a
        // name's length.
        let scope = namespace.map { "in the namespace \(goQuoted($0, 63))" } ?? "at the cluster scope"
        let reason = "User \(goQuoted(user, 256)) cannot \(verb) resource \(goQuoted(resource, 64)) in API group \"\" \(scope)"
        if let name { return "\(kind) \(goQuoted(name, 253)) is forbidden: \(reason)" }
        return "\(kind) is forbidden: \(reason)"
    }
}

/// Go's `%q` for the text our names hold: quotes, with `"` and `\` escaped and control
/// characters written out, so that the message stays one line.
func goQuoted(_ text: String, _ limit: Int) -> String {
    var out = "\""
    for scalar in text.prefix(limit).unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F {
                out += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

/// The start rule: a relay that listens beyond loopback must encrypt and authenticate, or say
/// `--insecure` out loud.
public enum ListenRule {
    public enum Verdict: Equatable, Sendable {
        case fine
        /// Starts, with this warning line.
        case warn(String)
        /// Refuses to start, with this line.
        case refuse(String)
    }

    /// `tls`: `--tls-cert-file` was given; `authenticates`: `--token-auth-file` or
    /// `--client-ca-file` was.
    public static func check(listen: SocketAddress, tls: Bool, authenticates: Bool, insecure: Bool) -> Verdict {
        if isLoopback(listen.ip) || (tls && authenticates) { return .fine }
        var missing: [String] = []
        if !tls { missing.append("TLS (--tls-cert-file)") }
        if !authenticates { missing.append("authentication (--token-auth-file or --client-ca-file)") }
        let what = missing.joined(separator: " and ")
        if insecure {
            return .warn("warning: listening on \(listen) without \(what) (--insecure): anyone who can reach it can reach every pod it serves, and tokens travel in plain text")
        }
        return .refuse("error: refusing to listen on \(listen) without \(what): a non-loopback address needs TLS and authentication (--insecure to listen anyway)")
    }

    /// 127.0.0.0/8, ::1, and IPv4-mapped loopback.
    public static func isLoopback(_ ip: String) -> Bool {
        var address = ip
        if address.hasPrefix("::ffff:") { address = String(address.dropFirst(7)) }
        if address == "::1" { return true }
        let parts = address.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }
}
