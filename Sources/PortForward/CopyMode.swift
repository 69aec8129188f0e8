/// How a stream's bytes move from a socket into the HTTP/2 connection.
public enum CopyMode: String, CaseIterable, Sendable {
    case auto
    /// socket -> pipe -> connection socket: the payload never enters user space.
    case splice
    /// socket -> pooled buffer -> writev with the frame header.
    case buffers

    /// What `auto` means here, chosen by measurement (docs/PERFORMANCE.md).
    public var resolved: CopyMode { self == .auto ? .splice : self }
}
