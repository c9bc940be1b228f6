#include <zmq.h>
// zmq_poll's timeout counts whole milliseconds; a timerfd polled beside the sockets wakes the
// scheduler at a batch's exact deadline (PollWakeTimer).
#include <sys/timerfd.h>
