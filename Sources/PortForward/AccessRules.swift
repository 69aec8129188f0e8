import Yams
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Who may reach which pods (`relay --authorization-file`), in YAML:
/// ```yaml
/// allow:
///   - {user: alice, namespaces: [default]}
///   - {group: dev, namespaces: [dev, staging], pods: ["web-*"]}
/// ```
/// Each rule names one user or one group, the namespaces, and optionally the pods; namespace
/// and pod names are fnmatch(3) patterns (`*`, `?`, `[...]`). A rule lets its subject port-forward
/// to (`create pods/portforward`) and read (`get pods`) the pods it covers, and list the pods of
/// a namespace when it covers all of them (no `pods:`); listing every namespace's pods needs a
/// rule for `"*"`. Everything else is denied.
public struct AccessRules: Sendable, Equatable {
    public enum Subject: Sendable, Equatable {
        case user(String)
        case group(String)
    }

    public struct Rule: Sendable, Equatable {
        public var subject: Subject
        public var namespaces: [String]
        /// nil: every pod of those namespaces.
        public var pods: [String]?

        public init(subject: Subject, namespaces: [String], pods: [String]? = nil) {
            self.subject = subject
            self.namespaces = namespaces
            self.pods = pods
        }

        func applies(to identity: Identity) -> Bool {
            switch subject {
            case .user(let user): return identity.user == user
            case .group(let group): return identity.groups.contains(group)
            }
        }
    }

    /// A file larger than this is refused unread.
    public static let maximumFileSize = 1 << 20
    /// Rules at most: each request is checked against every rule of its subject, in order.
    public static let maximumRules = 1_000
    /// Names and patterns (`namespaces` and `pods`) of all rules together: what one request may
    /// be compared with. The file's size does not bound them: a YAML alias repeats a list at the
    /// cost of a few bytes (`namespaces: *all` in each of 1,000 rules).
    public static let maximumPatterns = 10_000

    public private(set) var rules: [Rule] {
        didSet { patterns = rules.map(Compiled.init) }
    }
    /// Each rule's patterns, ready for fnmatch (C strings, literals told apart).
    private var patterns: [Compiled] = []

    private struct Compiled: Sendable {
        var namespaces: [Glob.Pattern]
        var pods: [Glob.Pattern]?

        init(_ rule: Rule) {
            namespaces = rule.namespaces.map(Glob.Pattern.init)
            pods = rule.pods?.map(Glob.Pattern.init)
        }
    }

    public static func == (left: AccessRules, right: AccessRules) -> Bool { left.rules == right.rules }

    public init(_ rules: [Rule]) {
        self.rules = rules
        patterns = rules.map(Compiled.init)
    }

    public init(contentsOf path: String) throws {
        try self.init(yaml: ConfigFile.read(path, kind: "authorization file", maximumSize: Self.maximumFileSize), source: path)
    }

    public init(yaml text: String, source: String = "authorization file") throws {
        let document = try ConfigFile.compose(text, source: source, needs: "an authorization file needs 3")
        guard case .mapping(let root)? = document else {
            throw ConfigFileError(description: "\(source): expected a top-level 'allow:' list")
        }
        for key in root.keys where key.scalar?.string != "allow" {
            throw ConfigFileError(description: "\(source)\(key.lineSuffix): unknown top-level field \(quoted(key.scalar?.string ?? key.described)) (known: allow)")
        }
        guard let list = root["allow"] else { throw ConfigFileError(description: "\(source): expected a top-level 'allow:' list") }
        let entries: [Node]
        switch list {
        case .sequence(let sequence): entries = Array(sequence)
        // `allow:` with nothing after it: nobody may.
        case .scalar where list.tagName == .null: entries = []
        default: throw ConfigFileError(description: "\(source)\(list.lineSuffix): 'allow' must be a list")
        }
        if entries.count > Self.maximumRules {
            throw ConfigFileError(description: "\(source): more than \(Self.maximumRules) rules (\(entries.count))")
        }
        var patternCount = 0
        rules = try entries.enumerated().map { index, entry in
            let rule = try RuleEntry(source: source, number: index + 1).rule(entry)
            patternCount += rule.namespaces.count + (rule.pods?.count ?? 0)
            if patternCount > Self.maximumPatterns {
                throw ConfigFileError(description: "\(source)\(entry.lineSuffix): rule #\(index + 1): more than \(Self.maximumPatterns) namespace and pod names in all rules")
            }
            return rule
        }
        patterns = rules.map(Compiled.init)
    }

    /// Whether a rule lets `identity` at `pod` of `namespace`. A nil pod asks for the whole
    /// namespace (a list), a nil namespace for every namespace.
    public func allows(_ identity: Identity, namespace: String?, pod: String?) -> Bool {
        // The names as C strings once per question, not once per pattern.
        let namespaceName = namespace.map(Glob.Name.init)
        let podName = pod.map(Glob.Name.init)
        for (index, rule) in rules.enumerated() where rule.applies(to: identity) {
            let compiled = patterns[index]
            guard let namespaceName else {
                if rule.pods == nil && rule.namespaces.contains("*") { return true }
                continue
            }
            guard compiled.namespaces.contains(where: { $0.matches(namespaceName) }) else { continue }
            guard let pods = compiled.pods else { return true }
            if let podName, pods.contains(where: { $0.matches(podName) }) { return true }
        }
        return false
    }
}

/// Shell patterns, as fnmatch(3) matches them: `*`, `?` and `[...]`; no flags (names hold no
/// `/` and no leading `.` that would need them).
enum Glob {
    static func matches(_ pattern: String, _ name: String) -> Bool {
        Pattern(pattern).matches(Name(name))
    }

    /// A pattern as fnmatch takes it; one without `*`, `?`, `[` or `\\` is compared as it is.
    struct Pattern: Sendable {
        let text: String
        let literal: Bool
        let cString: ContiguousArray<CChar>

        init(_ text: String) {
            self.text = text
            literal = !text.utf8.contains { $0 == UInt8(ascii: "*") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "[") || $0 == UInt8(ascii: "\\") }
            cString = text.utf8CString
        }

        func matches(_ name: Name) -> Bool {
            if literal { return text == name.text }
            return cString.withUnsafeBufferPointer { pattern in
                name.cString.withUnsafeBufferPointer { fnmatch(pattern.baseAddress, $0.baseAddress, 0) == 0 }
            }
        }
    }

    /// A name asked about, as text and as a C string.
    struct Name {
        let text: String
        let cString: ContiguousArray<CChar>

        init(_ text: String) {
            self.text = text
            cString = text.utf8CString
        }
    }

    /// Whether fnmatch can use the pattern: an unclosed `[` is matched literally by glibc,
    /// which is never what was meant.
    static func isValid(_ pattern: String) -> Bool {
        var inBracket = false
        var escaped = false
        for character in pattern {
            if escaped { escaped = false; continue }
            switch character {
            case "\\": escaped = true
            case "[": inBracket = true
            case "]": inBracket = false
            default: break
            }
        }
        return !inBracket && !escaped
    }
}

/// One entry of the `allow:` list; every problem is "FILE:LINE: rule #N: WHAT".
private struct RuleEntry {
    let source: String
    let number: Int

    static let fields: Set<String> = ["user", "group", "namespaces", "pods"]

    func rule(_ entry: Node) throws -> AccessRules.Rule {
        guard case .mapping(let mapping) = entry else {
            throw problem(entry, "must be a mapping such as {user: alice, namespaces: [default]}, not \(entry.described)")
        }
        var values: [String: Node] = [:]
        for (key, value) in mapping {
            let field = key.scalar?.string ?? key.described
            guard Self.fields.contains(field) else {
                throw problem(key, "unknown field \(quoted(field)) (known: user, group, namespaces, pods)")
            }
            guard values[field] == nil else { throw problem(key, "field '\(field)' is given twice") }
            values[field] = value
        }
        let subject: AccessRules.Subject
        switch (values["user"], values["group"]) {
        case (let user?, nil): subject = .user(try name("user", user))
        case (nil, let group?): subject = .group(try name("group", group))
        case (.some, .some): throw problem(entry, "names a user and a group: one rule is for one of them")
        case (nil, nil): throw problem(entry, "names no user and no group")
        }
        guard let namespacesNode = values["namespaces"] else {
            throw problem(entry, "has no namespaces (a list such as [default], or [\"*\"] for all)")
        }
        let namespaces = try patterns("namespaces", namespacesNode)
        let pods = try values["pods"].map { try patterns("pods", $0) }
        return AccessRules.Rule(subject: subject, namespaces: namespaces, pods: pods)
    }

    private func name(_ field: String, _ node: Node) throws -> String {
        guard case .scalar(let scalar) = node, node.tagName == .str, !scalar.string.isEmpty else {
            throw problem(node, "\(field) must be a non-empty string, not \(node.described)")
        }
        return scalar.string
    }

    private func patterns(_ field: String, _ node: Node) throws -> [String] {
        guard case .sequence(let sequence) = node, !sequence.isEmpty else {
            throw problem(node, "\(field) must be a non-empty list of names or patterns such as [\"web-*\"], not \(node.described)")
        }
        return try sequence.map { item in
            let pattern = try name(field, item)
            guard Glob.isValid(pattern) else { throw problem(item, "\(field): \(quoted(pattern)) has an unclosed '[' or a trailing '\\'") }
            return pattern
        }
    }

    private func problem(_ node: Node, _ what: String) -> ConfigFileError {
        ConfigFileError(description: "\(source)\(node.lineSuffix): rule #\(number): \(what)")
    }
}
