// CEvents: the Linux event interfaces Swift's Glibc module leaves out, for the VMM's event loop
// (Sources/VMM/EventLoop.swift). Headers only; no logic.
#ifndef CEVENTS_H
#define CEVENTS_H

#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

// EPOLLIN and friends are enum constants in glibc's header, which Swift imports with an enum
// type; these give them as plain integers.
static const unsigned int cevents_epollin = EPOLLIN;
static const unsigned int cevents_epollout = EPOLLOUT;

#endif
