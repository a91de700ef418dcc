#define _GNU_SOURCE
#include "apus_shim.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int apus_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int apus_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int apus_epoll_wait(int epfd, uint64_t *datas, uint32_t *evs, int max, int timeout_ms) {
    struct epoll_event events[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, events, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        datas[i] = events[i].data.u64;
        evs[i] = events[i].events;
    }
    return n;
}

int apus_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int apus_accept4(int fd, struct sockaddr *addr, socklen_t *len) {
    return accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

uint32_t apus_epollin(void) { return EPOLLIN; }
uint32_t apus_epollout(void) { return EPOLLOUT; }
uint32_t apus_epolloneshot(void) { return EPOLLONESHOT; }
uint32_t apus_epollerr(void) { return EPOLLERR; }
uint32_t apus_epollhup(void) { return EPOLLHUP; }
uint32_t apus_epollrdhup(void) { return EPOLLRDHUP; }

int apus_ssl_ctx_set_min_proto(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_min_proto_version(ctx, version); }
long apus_ssl_ctx_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
long apus_ssl_set_tlsext_host_name(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }
long apus_ssl_ctx_set_session_cache_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_session_cache_mode(ctx, mode); }
int apus_tls1_2_version(void) { return TLS1_2_VERSION; }
long apus_ssl_mode_release_buffers(void) { return SSL_MODE_RELEASE_BUFFERS; }
long apus_ssl_mode_accept_moving_write_buffer(void) { return SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER; }
long apus_ssl_mode_enable_partial_write(void) { return SSL_MODE_ENABLE_PARTIAL_WRITE; }
long apus_ssl_sess_cache_server(void) { return SSL_SESS_CACHE_SERVER; }
unsigned long apus_ssl_op_no_renegotiation(void) { return SSL_OP_NO_RENEGOTIATION; }

/* ---- Cyrus SASL ---------------------------------------------------------------------------
 * Cyrus keeps pointers to the appname and the callback array: both live in static storage here.
 * The library's global state is guarded by real mutexes (sessions run on several threads). */

static char *sasl_db_path;
static char *sasl_mechs;

static int apus_sasl_getopt(void *context, const char *plugin, const char *option,
                            const char **result, unsigned *len) {
    (void)context; (void)plugin;
    const char *value = NULL;
    if (strcmp(option, "sasldb_path") == 0) value = sasl_db_path;
    else if (strcmp(option, "pwcheck_method") == 0) value = "auxprop";
    else if (strcmp(option, "auxprop_plugin") == 0) value = "sasldb";
    else if (strcmp(option, "mech_list") == 0) value = sasl_mechs;
    else if (strcmp(option, "log_level") == 0) value = "0";
    if (value == NULL) return SASL_FAIL;
    *result = value;
    if (len) *len = (unsigned)strlen(value);
    return SASL_OK;
}

static int apus_sasl_log(void *context, int level, const char *message) {
    (void)context; (void)level; (void)message;
    return SASL_OK; /* Apus logs outcomes itself; Cyrus messages can echo user input. */
}

/* Points Cyrus at an empty directory of config files so /etc/sasl2 never changes our behaviour. */
static int apus_sasl_getconfpath(void *context, const char **path) {
    (void)context;
    *path = "/nonexistent/apus-sasl-conf";
    return SASL_OK;
}

static sasl_callback_t server_callbacks[] = {
    { SASL_CB_GETOPT, (int (*)(void))apus_sasl_getopt, NULL },
    { SASL_CB_LOG, (int (*)(void))apus_sasl_log, NULL },
    { SASL_CB_GETCONFPATH, (int (*)(void))apus_sasl_getconfpath, NULL },
    { SASL_CB_LIST_END, NULL, NULL },
};

static void *m_alloc(void) {
    pthread_mutex_t *m = malloc(sizeof *m);
    if (m) pthread_mutex_init(m, NULL);
    return m;
}
static int m_lock(void *m) { return pthread_mutex_lock(m); }
static int m_unlock(void *m) { return pthread_mutex_unlock(m); }
static void m_free(void *m) { pthread_mutex_destroy(m); free(m); }

int apus_sasl_server_init(const char *appname, const char *sasldb_path, const char *mech_list) {
    sasl_db_path = strdup(sasldb_path);
    sasl_mechs = strdup(mech_list);
    sasl_set_mutex(m_alloc, m_lock, m_unlock, m_free);
    return sasl_server_init(server_callbacks, strdup(appname));
}

static sasl_callback_t client_callbacks[] = {
    { SASL_CB_LOG, (int (*)(void))apus_sasl_log, NULL },
    { SASL_CB_GETCONFPATH, (int (*)(void))apus_sasl_getconfpath, NULL },
    { SASL_CB_LIST_END, NULL, NULL },
};

int apus_sasl_client_init(void) { return sasl_client_init(client_callbacks); }
