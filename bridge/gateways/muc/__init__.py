"""Multi-user chat (XEP-0045) on ``conference.<host>`` of every local host: rooms, their forms and the service."""
