import Foundation
import Worker

/// A reply from the scheduler to one SUBMIT.
public enum SchedulerReply: Sendable, Equatable {
    case image(ResultHeader, png: Data)
    case error(ErrorBody)

    /// The request id the reply is for.
    public var id: String? {
        switch self {
        case let .image(header, _): return header.id
        case let .error(body): return body.id
        }
    }
}

/// Why a `SchedulerClient` call did not get a reply.
public enum SchedulerClientError: Error, CustomStringConvertible, Equatable {
    case timedOut(id: String, seconds: Double)
    case duplicateID(String)
    case requestTooLarge(id: String, bytes: Int, limit: Int)
    case closed

    public var description: String {
        switch self {
        case let .timedOut(id, seconds): return "no reply for request '\(id)' within \(seconds) s"
        case let .duplicateID(id): return "request id '\(id)' is already waiting for a reply on this client"
        case let .requestTooLarge(id, bytes, limit): return "request '\(id)' is \(bytes) bytes; the scheduler accepts \(limit)"
        case .closed: return "the scheduler client is closed"
        }
    }
}

/// A thread-safe client of the scheduler's front end, for the HTTP gateway, the CLI and tests.
///
/// One I/O thread owns a DEALER connected to the scheduler; callers hand it messages through an
/// inproc PUSH/PULL pair and wait on their own condition for the reply with their request id.
/// Call `close()` when done (releasing the client also closes it).
public final class SchedulerClient: @unchecked Sendable {
    public let endpoint: String
    /// Requests larger than this are refused locally (the scheduler's `maxRequestBytes`).
    public let maxRequestBytes: Int
    private let context: ZMQContext
    private let outbox: ZMQSocket
    private let outboxLock = NSLock()
    /// Shared with the I/O thread, which must not hold the client itself (so `deinit` can run).
    private let mailbox = ClientMailbox()
    private let thread: Thread

    /// Connects to the scheduler's front end (e.g. `tcp://127.0.0.1:5555`) and starts the I/O thread.
    ///
    /// With `curve`, the connection is a CurveZMQ client: encrypted, and authenticated by
    /// `curve.keyPair`. A refused or mismatched handshake is not an error here: requests then time out.
    public init(endpoint: String, maxRequestBytes: Int = 256 * 1024, context: ZMQContext? = nil,
                curve: CurveClientSecurity? = nil) throws {
        self.endpoint = endpoint
        self.maxRequestBytes = maxRequestBytes
        self.context = try context ?? ZMQContext()
        let address = "inproc://sura-scheduler-client-\(UUID().uuidString)"
        let inbox = try ZMQSocket(context: self.context, kind: .pull)
        try inbox.bind(address)
        outbox = try ZMQSocket(context: self.context, kind: .push)
        try outbox.connect(address)
        let dealer = try ZMQSocket(context: self.context, kind: .dealer)
        try dealer.setHighWaterMarks(send: 100_000, receive: 100_000)
        if let curve { try dealer.makeCurveClient(curve) }
        try dealer.connect(endpoint)
        let mailbox = self.mailbox
        thread = Thread { ClientMailbox.loop(inbox: inbox, dealer: dealer, mailbox: mailbox) }
        thread.start()
        thread.name = "sura-client"
    }

    deinit { close() }

    /// Stops the I/O thread; waiting calls throw `closed`.
    public func close() {
        guard mailbox.close() else { return }
        while !thread.isFinished { usleep(1000) }
        outboxLock.lock()
        outbox.close()
        outboxLock.unlock()
    }

    /// Sends one request and waits for its reply (an image or an explicit error).
    public func submit(_ body: SubmitBody, timeout: TimeInterval) throws -> SchedulerReply {
        try submitAll([body], timeout: timeout)[0]
    }

    /// Sends several requests at once and waits for every reply, in the order of `bodies`.
    public func submitAll(_ bodies: [SubmitBody], timeout: TimeInterval) throws -> [SchedulerReply] {
        var messages: [[Data]] = []
        for body in bodies {
            let json = WireProtocol.encode(body)
            if json.count > maxRequestBytes { throw SchedulerClientError.requestTooLarge(id: body.id, bytes: json.count, limit: maxRequestBytes) }
            messages.append([Data()] + WireProtocol.frames(WireProtocol.submit, [json]))
        }
        let waiters = try mailbox.register(bodies.map(\.id))
        do {
            try post(messages)
        } catch {
            mailbox.forget(bodies.map(\.id))
            throw error
        }
        let deadline = Date().addingTimeInterval(timeout)
        var replies: [SchedulerReply] = []
        for (id, waiter) in zip(bodies.map(\.id), waiters) {
            switch waiter.wait(until: deadline) {
            case let .reply(reply)?:
                replies.append(reply)
            case let .failure(failure)?:
                mailbox.forget(bodies.map(\.id))
                throw failure
            default:
                mailbox.forget(bodies.map(\.id))
                throw SchedulerClientError.timedOut(id: id, seconds: timeout)
            }
        }
        return replies
    }

    /// The scheduler's `STATUS`.
    public func status(timeout: TimeInterval) throws -> SchedulerStatus {
        let waiter = try mailbox.registerStatus()
        try post([[Data()] + WireProtocol.frames(WireProtocol.status)])
        switch waiter.wait(until: Date().addingTimeInterval(timeout)) {
        case let .status(status)?:
            return status
        case let .failure(failure)?:
            throw failure
        default:
            mailbox.forgetStatus(waiter)
            throw SchedulerClientError.timedOut(id: "STATUS", seconds: timeout)
        }
    }

    private func post(_ messages: [[Data]]) throws {
        outboxLock.lock()
        defer { outboxLock.unlock() }
        for message in messages { try outbox.send(message) }
    }
}

/// The waiters of a `SchedulerClient`, shared between callers and its I/O thread.
final class ClientMailbox: @unchecked Sendable {
    enum Outcome {
        case reply(SchedulerReply)
        case status(SchedulerStatus)
        case failure(SchedulerClientError)
    }

    final class Waiter: @unchecked Sendable {
        private let condition = NSCondition()
        private var outcome: Outcome?

        func finish(_ value: Outcome) {
            condition.lock()
            if outcome == nil { outcome = value }
            condition.signal()
            condition.unlock()
        }

        /// The outcome, or nil at the deadline.
        func wait(until deadline: Date) -> Outcome? {
            condition.lock()
            defer { condition.unlock() }
            while outcome == nil && condition.wait(until: deadline) {}
            return outcome
        }
    }

    private let lock = NSLock()
    private var waiters: [String: Waiter] = [:]
    private var statusWaiters: [Waiter] = []
    private var closed = false

    var isClosed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return closed
    }

    /// Marks the mailbox closed and fails every waiter; false if it was closed already.
    func close() -> Bool {
        lock.lock()
        guard !closed else {
            lock.unlock()
            return false
        }
        closed = true
        let everyone = Array(waiters.values) + statusWaiters
        waiters.removeAll()
        statusWaiters.removeAll()
        lock.unlock()
        for waiter in everyone { waiter.finish(.failure(.closed)) }
        return true
    }

    func register(_ ids: [String]) throws -> [Waiter] {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw SchedulerClientError.closed }
        var seen = Set<String>()
        for id in ids where waiters[id] != nil || !seen.insert(id).inserted { throw SchedulerClientError.duplicateID(id) }
        let created = ids.map { _ in Waiter() }
        for (id, waiter) in zip(ids, created) { waiters[id] = waiter }
        return created
    }

    func forget(_ ids: [String]) {
        lock.lock()
        for id in ids { waiters[id] = nil }
        lock.unlock()
    }

    func registerStatus() throws -> Waiter {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { throw SchedulerClientError.closed }
        let waiter = Waiter()
        statusWaiters.append(waiter)
        return waiter
    }

    func forgetStatus(_ waiter: Waiter) {
        lock.lock()
        statusWaiters.removeAll { $0 === waiter }
        lock.unlock()
    }

    private func complete(id: String, _ reply: SchedulerReply) {
        lock.lock()
        let waiter = waiters.removeValue(forKey: id)
        lock.unlock()
        waiter?.finish(.reply(reply))
    }

    private func completeStatus(_ status: SchedulerStatus) {
        lock.lock()
        let waiter = statusWaiters.isEmpty ? nil : statusWaiters.removeFirst()
        lock.unlock()
        waiter?.finish(.status(status))
    }

    /// The I/O thread: forwards posted messages to the scheduler and replies to their waiters.
    ///
    /// Forwarding never blocks: a DEALER whose handshake failed (a refused CURVE key, a plain
    /// client of a CURVE server) has no connection to queue on, and a blocking send would hold
    /// this thread, and `close()` waiting for it, for good. Such messages wait here and are
    /// offered again every poll; their callers time out as documented.
    static func loop(inbox: ZMQSocket, dealer: ZMQSocket, mailbox: ClientMailbox) {
        defer {
            inbox.close()
            dealer.close()
        }
        var unsent: [[Data]] = []
        while !mailbox.isClosed {
            guard let readable = try? ZMQSocket.pollReadable([inbox, dealer], timeout: unsent.isEmpty ? 100 : 10) else { return }
            if readable[0] {
                while let message = try? inbox.receive(dontWait: true) { unsent.append(message.frames) }
            }
            var sent = 0
            while sent < unsent.count, (try? dealer.send(unsent[sent], dontWait: true)) == true { sent += 1 }
            unsent.removeFirst(sent)
            if readable[1] {
                while let message = try? dealer.receive(dontWait: true) { mailbox.deliver(message.frames) }
            }
        }
    }

    private func deliver(_ frames: [Data]) {
        let body = frames.first?.isEmpty == true ? Array(frames.dropFirst()) : frames
        guard let (command, payload) = try? WireProtocol.parse(body), let first = payload.first else { return }
        switch command {
        case WireProtocol.result:
            guard payload.count == 2, let header = try? WireProtocol.decode(ResultHeader.self, from: first, what: "RESULT") else { return }
            complete(id: header.id, .image(header, png: payload[1]))
        case WireProtocol.error:
            guard let error = try? WireProtocol.decode(ErrorBody.self, from: first, what: "ERROR"), let id = error.id else { return }
            complete(id: id, .error(error))
        case WireProtocol.status:
            guard let status = try? WireProtocol.decode(SchedulerStatus.self, from: first, what: "STATUS") else { return }
            completeStatus(status)
        default:
            return
        }
    }
}
