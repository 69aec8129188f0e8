// Small string helpers, so that no module needs Foundation.
extension StringProtocol {
    /// Without leading and trailing white space (spaces, tabs, line ends).
    public var trimmed: String {
        var slice = Substring(self)
        while let first = slice.first, first.isWhitespace { slice.removeFirst() }
        while let last = slice.last, last.isWhitespace { slice.removeLast() }
        return String(slice)
    }

    /// Split on CRLF.
    public var httpLines: [String] {
        var lines: [String] = []
        var current = ""
        var previousCR = false
        for character in self {
            if character == "\r\n" { lines.append(current); current = ""; previousCR = false; continue }
            if previousCR { current.append("\r") }
            previousCR = character == "\r"
            if !previousCR { current.append(character) }
        }
        lines.append(current)
        return lines
    }
}
