/*
 * System calls of the router's per-request path on raw descriptors, without socket objects and without exceptions.
 *
 * Python's socket module costs more around these calls than the calls themselves: a socket object per connection,
 * the peer address formatted into a tuple on every accept (and then thrown away), the address tuple parsed on every
 * connect, and an exception for every EAGAIN. Each function here is one system call (two for connect), returns a
 * non-negative result or -errno, and never raises for an OS error (but epoll_wait: a failing wait is the loop's own
 * bug). uwsgirouter/router/sysio.py has the same functions in Python for the pure build; tests/router/test_sysio.py
 * runs both against each other.
 *
 * None of them lets go of the GIL around its call: on a non-blocking descriptor the call is shorter than the round
 * trip of the lock. epoll_wait, the one call that blocks, keeps it only while the interpreter has no other thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int
as_int(PyObject *obj, int *out)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred())
        return -1;
    *out = (int)value;
    return 0;
}

/* accept(listener_fd) -> fd or -errno: the new connection non-blocking and close-on-exec, its address not asked. */
static PyObject *
fastio_accept(PyObject *module, PyObject *arg)
{
    int listener;
    if (as_int(arg, &listener) < 0)
        return NULL;
    int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return PyLong_FromLong(fd < 0 ? -errno : fd);
}

/* connect(family, sockaddr) -> fd or -errno: a non-blocking stream socket connected (or connecting: EINPROGRESS
 * counts as success, the caller's first send says whether the handshake is over) to the packed address. */
static PyObject *
fastio_connect(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int family;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "connect(family, sockaddr) takes two arguments");
        return NULL;
    }
    if (as_int(args[0], &family) < 0)
        return NULL;
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "connect(): the address must be bytes (a packed struct sockaddr)");
        return NULL;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return PyLong_FromLong(-errno);
    if (connect(fd, (const struct sockaddr *)PyBytes_AS_STRING(args[1]), (socklen_t)PyBytes_GET_SIZE(args[1])) < 0
        && errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        return PyLong_FromLong(-err);
    }
    return PyLong_FromLong(fd);
}

/* send(fd, data) -> bytes sent or -errno (-EAGAIN: the socket's buffer is full). No SIGPIPE. */
static PyObject *
fastio_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_buffer view;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(fd, data) takes two arguments");
        return NULL;
    }
    if (as_int(args[0], &fd) < 0)
        return NULL;
    if (PyBytes_CheckExact(args[1])) { /* the usual case, without the buffer protocol's round trip */
        ssize_t sent = send(fd, PyBytes_AS_STRING(args[1]), (size_t)PyBytes_GET_SIZE(args[1]),
                            MSG_DONTWAIT | MSG_NOSIGNAL);
        return PyLong_FromSsize_t(sent < 0 ? -errno : sent);
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    ssize_t sent = send(fd, view.buf, (size_t)view.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    int err = errno;
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(sent < 0 ? -err : sent);
}

/* so_error(fd) -> the pending error of a socket (how a non-blocking connect ended), 0 if none, or -errno. */
static PyObject *
fastio_so_error(PyObject *module, PyObject *arg)
{
    int fd, value = 0;
    socklen_t size = sizeof(value);
    if (as_int(arg, &fd) < 0)
        return NULL;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &size) < 0)
        return PyLong_FromLong(-errno);
    return PyLong_FromLong(value);
}

/* shutdown_write(fd) -> 0 or -errno: the peer reads end of input after what was sent. */
static PyObject *
fastio_shutdown_write(PyObject *module, PyObject *arg)
{
    int fd;
    if (as_int(arg, &fd) < 0)
        return NULL;
    return PyLong_FromLong(shutdown(fd, SHUT_WR) < 0 ? -errno : 0);
}

/* Whether this is the interpreter's only thread: then the GIL is kept across the calls below (nobody else could
 * take it; dropping and taking it back costs more than the non-blocking call itself). With other threads (a
 * --fastrouter-use-code-string mapper may start some) the wait for events lets them run. */
static int
only_thread(void)
{
    PyThreadState *head = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(PyThreadState_Get()));
    return head != NULL && PyThreadState_Next(head) == NULL;
}

/* What a read returns when it fills less than SMALL_READ bytes is copied out of `spare`, a bytes object of the
 * size asked that is kept for the next read: most reads of a router are short (a head, a short answer), and a fresh
 * 64 KiB object for each of them costs a malloc, a realloc to the size read, and a free that makes glibc consolidate
 * its heap. A longer read gives `spare` itself away, cut to size. Only touched with the GIL held. */
#define SMALL_READ 8192
static PyObject *spare = NULL;

/* read(fd, size) -> bytes (b"" at end of input) or -errno (-EAGAIN: nothing to read now). */
static PyObject *
fastio_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd, size;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read(fd, size) takes two arguments");
        return NULL;
    }
    if (as_int(args[0], &fd) < 0 || as_int(args[1], &size) < 0)
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "read(): negative size");
        return NULL;
    }
    if (spare == NULL || PyBytes_GET_SIZE(spare) != size) {
        Py_CLEAR(spare);
        spare = PyBytes_FromStringAndSize(NULL, size);
        if (spare == NULL)
            return NULL;
    }
    ssize_t got = read(fd, PyBytes_AS_STRING(spare), (size_t)size);
    if (got < 0)
        return PyLong_FromLong(-errno);
    if (got < SMALL_READ)
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(spare), got);
    PyObject *data = spare;
    spare = NULL;
    if (got != size && _PyBytes_Resize(&data, got) < 0)
        return NULL;
    return data;
}

/* close(fd) -> 0 or -errno (the descriptor is released either way, as Linux does). */
static PyObject *
fastio_close(PyObject *module, PyObject *arg)
{
    int fd;
    if (as_int(arg, &fd) < 0)
        return NULL;
    return PyLong_FromLong(close(fd) < 0 ? -errno : 0);
}

/* epoll_create() -> a close-on-exec epoll descriptor or -errno. */
static PyObject *
fastio_epoll_create(PyObject *module, PyObject *unused)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return PyLong_FromLong(fd < 0 ? -errno : fd);
}

/* epoll_ctl(epfd, op, fd, mask) -> 0 or -errno; the event's data is the descriptor. */
static PyObject *
fastio_epoll_ctl(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int epfd, op, fd, mask;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "epoll_ctl(epfd, op, fd, mask) takes four arguments");
        return NULL;
    }
    if (as_int(args[0], &epfd) < 0 || as_int(args[1], &op) < 0 || as_int(args[2], &fd) < 0
        || as_int(args[3], &mask) < 0)
        return NULL;
    struct epoll_event event = {.events = (uint32_t)mask, .data = {.fd = fd}};
    return PyLong_FromLong(epoll_ctl(epfd, op, fd, &event) < 0 ? -errno : 0);
}

#define MAX_EVENTS 1024

/* epoll_wait(epfd, timeout_ms, maxevents) -> (fd, events, fd, events, ...), flat: no tuple per event, and the
 * descriptors and event bits of a router are small ints that Python keeps ready-made. Interrupted by a signal, the
 * handlers run (PyErr_CheckSignals) and the list is empty; another error raises OSError. */
static PyObject *
fastio_epoll_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int epfd, timeout, maxevents, ready;
    struct epoll_event events[MAX_EVENTS];
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "epoll_wait(epfd, timeout_ms, maxevents) takes three arguments");
        return NULL;
    }
    if (as_int(args[0], &epfd) < 0 || as_int(args[1], &timeout) < 0 || as_int(args[2], &maxevents) < 0)
        return NULL;
    if (maxevents < 1 || maxevents > MAX_EVENTS) {
        PyErr_Format(PyExc_ValueError, "epoll_wait(): maxevents must be 1 to %d", MAX_EVENTS);
        return NULL;
    }
    if (timeout == 0 || only_thread()) {
        ready = epoll_wait(epfd, events, maxevents, timeout);
    } else {
        Py_BEGIN_ALLOW_THREADS
        ready = epoll_wait(epfd, events, maxevents, timeout);
        Py_END_ALLOW_THREADS
    }
    if (ready < 0) {
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0)
            return NULL;
        ready = 0;
    }
    PyObject *flat = PyTuple_New(2 * (Py_ssize_t)ready); /* small tuples come from a free list: no allocation */
    if (flat == NULL)
        return NULL;
    for (int i = 0; i < ready; i++) {
        PyObject *fd = PyLong_FromLong(events[i].data.fd);
        PyObject *mask = fd == NULL ? NULL : PyLong_FromUnsignedLong(events[i].events);
        if (mask == NULL) {
            Py_XDECREF(fd);
            Py_DECREF(flat);
            return NULL;
        }
        PyTuple_SET_ITEM(flat, 2 * i, fd);
        PyTuple_SET_ITEM(flat, 2 * i + 1, mask);
    }
    return flat;
}

/* monotonic() -> seconds of CLOCK_MONOTONIC, time.monotonic's clock, read without its layers of conversion (the
 * loop reads it once per wake-up). */
static PyObject *
fastio_monotonic(PyObject *module, PyObject *unused)
{
    struct timespec now;
    if (clock_gettime(CLOCK_MONOTONIC, &now) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyFloat_FromDouble((double)now.tv_sec + (double)now.tv_nsec * 1e-9);
}

static PyMethodDef fastio_methods[] = {
    {"accept", (PyCFunction)fastio_accept, METH_O, "accept(listener_fd) -> fd or -errno"},
    {"connect", (PyCFunction)(void (*)(void))fastio_connect, METH_FASTCALL, "connect(family, sockaddr) -> fd or -errno"},
    {"send", (PyCFunction)(void (*)(void))fastio_send, METH_FASTCALL, "send(fd, data) -> sent or -errno"},
    {"so_error", (PyCFunction)fastio_so_error, METH_O, "so_error(fd) -> pending error, 0, or -errno"},
    {"shutdown_write", (PyCFunction)fastio_shutdown_write, METH_O, "shutdown_write(fd) -> 0 or -errno"},
    {"read", (PyCFunction)(void (*)(void))fastio_read, METH_FASTCALL, "read(fd, size) -> bytes or -errno"},
    {"close", (PyCFunction)fastio_close, METH_O, "close(fd) -> 0 or -errno"},
    {"epoll_create", (PyCFunction)fastio_epoll_create, METH_NOARGS, "epoll_create() -> epoll fd or -errno"},
    {"epoll_ctl", (PyCFunction)(void (*)(void))fastio_epoll_ctl, METH_FASTCALL,
     "epoll_ctl(epfd, op, fd, mask) -> 0 or -errno"},
    {"epoll_wait", (PyCFunction)(void (*)(void))fastio_epoll_wait, METH_FASTCALL,
     "epoll_wait(epfd, timeout_ms, maxevents) -> (fd, events, ...)"},
    {"monotonic", (PyCFunction)fastio_monotonic, METH_NOARGS, "monotonic() -> seconds of CLOCK_MONOTONIC"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastio_module = {
    PyModuleDef_HEAD_INIT, "_fastio", "The router's per-request system calls on raw descriptors.", -1, fastio_methods,
};

PyMODINIT_FUNC
PyInit__fastio(void)
{
    return PyModule_Create(&fastio_module);
}
