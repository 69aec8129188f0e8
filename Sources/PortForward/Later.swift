import Reactor

/// Runs a closure when its timer fires (`reactor.timer(..., handler: Later { ... }, tag: 0)`): the
/// client's re-dials and sweeps, the gateway's drain.
final class Later: CompletionHandler {
    let action: () -> Void
    init(_ action: @escaping () -> Void) { self.action = action }
    func complete(_ completion: Completion) { action() }
}
