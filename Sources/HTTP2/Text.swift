// Small string helpers, so that no module needs Foundation.
extension StringProtocol {
    /// Without leading and trailing white space (spaces, tabs, line ends).
    public var trimmed: String {
        var slice = Substring(self)
        while let first = slice.first, first.isWhitespace { slice.removeFirst() }
        while let last = slice.last, last.isWhitespace { slice.removeLast() }
        return String(slice)
    }
}

extension Double {
    /// At most one decimal: 5 -> "5", 2.5 -> "2.5".
    public var formatted1: String {
        let tenths = Int((self * 10).rounded())
        return tenths % 10 == 0 ? "\(tenths / 10)" : "\(tenths / 10).\(tenths % 10)"
    }
}
