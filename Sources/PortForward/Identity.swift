/// Who a connection or request speaks for, once authenticated: a bearer token's user (from the
/// token file), or a client certificate's subject (CN the user, each O a group), as
/// kube-apiserver reads them.
public struct Identity: Equatable, Sendable, CustomStringConvertible {
    public var user: String
    public var groups: [String]

    public init(user: String, groups: [String] = []) {
        self.user = user
        self.groups = groups
    }

    public var description: String { user }
}
