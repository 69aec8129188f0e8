import FuzzSupport
import PortForward

// `AccessRules(yaml:source:)` on any text: it loads or throws one line that starts with the
// source; every rule it loads names a subject and at least one namespace, and asking it about
// anyone anywhere answers without trapping; a rule always lets its own subject at a namespace it
// names literally (no pattern characters) when it has no `pods:`.

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = FuzzInput(data, size).bytes.text
    let rules: AccessRules
    do {
        rules = try AccessRules(yaml: text, source: "fuzz.yaml")
    } catch {
        let message = "\(error)"
        require(message.hasPrefix("fuzz.yaml") && !message.contains("\n"), "an error not one line from the file: \(message.debugDescription)")
        return 0
    }
    require(rules.rules.count <= AccessRules.maximumRules, "\(rules.rules.count) rules")
    for rule in rules.rules {
        require(!rule.namespaces.isEmpty && rule.pods.map { !$0.isEmpty } ?? true, "\(rule)")
        let identity: Identity
        switch rule.subject {
        case .user(let user): identity = Identity(user: user)
        case .group(let group): identity = Identity(user: "someone", groups: [group])
        }
        for namespace in rule.namespaces {
            _ = rules.allows(identity, namespace: namespace, pod: "web")
            _ = rules.allows(identity, namespace: namespace, pod: nil)
            let literal = !namespace.contains(where: { "*?[\\".contains($0) })
            if literal && rule.pods == nil {
                require(rules.allows(identity, namespace: namespace, pod: "web"), "\(rule) does not allow its own namespace")
            }
        }
        _ = rules.allows(identity, namespace: nil, pod: nil)
    }
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }
