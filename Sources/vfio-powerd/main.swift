import Glibc

// Block the signals the daemon handles before any thread exists, so every thread inherits
// the mask and a signal sent right after start-up waits for its Dispatch source instead of
// killing the process (with only SIG_IGN, a signal sent right after activate() was lost in
// 4 of 5 runs: ../shared/docs/swift-on-linux.md).
var handledSignals = sigset_t()
sigemptyset(&handledSignals)
for signal in [SIGHUP, SIGTERM, SIGINT] { sigaddset(&handledSignals, signal) }
pthread_sigmask(SIG_BLOCK, &handledSignals, nil)

VFIOPowerd.main()
