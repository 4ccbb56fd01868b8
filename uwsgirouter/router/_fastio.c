/*
 * System calls of the router's per-request path on raw descriptors, without socket objects and without exceptions.
 *
 * Python's socket module costs more around these calls than the calls themselves: a socket object per connection,
 * the peer address formatted into a tuple on every accept (and then thrown away), the address tuple parsed on every
 * connect, and an exception for every EAGAIN. Each function here is one system call (two for connect), returns a
 * non-negative result or -errno, and never raises for an OS error. uwsgirouter/router/sysio.py has the same
 * functions in Python for the pure build; tests/router/test_sysio.py runs both against each other.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sys/socket.h>
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

static PyMethodDef fastio_methods[] = {
    {"accept", (PyCFunction)fastio_accept, METH_O, "accept(listener_fd) -> fd or -errno"},
    {"connect", (PyCFunction)(void (*)(void))fastio_connect, METH_FASTCALL, "connect(family, sockaddr) -> fd or -errno"},
    {"send", (PyCFunction)(void (*)(void))fastio_send, METH_FASTCALL, "send(fd, data) -> sent or -errno"},
    {"so_error", (PyCFunction)fastio_so_error, METH_O, "so_error(fd) -> pending error, 0, or -errno"},
    {"shutdown_write", (PyCFunction)fastio_shutdown_write, METH_O, "shutdown_write(fd) -> 0 or -errno"},
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
