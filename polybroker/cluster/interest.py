"""What the other nodes of a cluster want: their subscribed topic filters, in one topic
trie whose subscribers are node names, so a publish finds the nodes to hand it to in one
walk (the broker's own ``router.TopicTrie``: same matching rules, same route cache)."""

from collections.abc import Collection

from ..router import TopicTrie


class RemoteInterest:
    """The filters of every other node; ``nodes_for(topic)`` those whose filters match."""

    def __init__(self) -> None:
        self._trie: TopicTrie[str, bool] = TopicTrie()
        self._by_node: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._trie)

    def nodes(self) -> set[str]:
        return set(self._by_node)

    def filters_of(self, node: str) -> set[str]:
        return set(self._by_node.get(node, ()))

    def add(self, node: str, topic_filter: str) -> None:
        self._by_node.setdefault(node, set()).add(topic_filter)
        self._trie.add(topic_filter, node, True)

    def remove(self, node: str, topic_filter: str) -> None:
        filters = self._by_node.get(node)
        if filters is None or topic_filter not in filters:
            return
        filters.discard(topic_filter)
        self._trie.remove(topic_filter, node)

    def replace(self, node: str, filters: set[str]) -> None:
        """The node's whole set of filters, as read from Redis."""
        for gone in self.filters_of(node) - filters:
            self.remove(node, gone)
        for topic_filter in filters:
            self.add(node, topic_filter)

    def forget(self, node: str) -> None:
        """The node went away: none of its filters count any more."""
        for topic_filter in self.filters_of(node):
            self._trie.remove(topic_filter, node)
        self._by_node.pop(node, None)

    def nodes_for(self, topic: str) -> Collection[str]:
        """On the publish path: nothing is copied when one filter matches (the trie's
        cached dict, whose keys are the nodes; not to be changed)."""
        matches = self._trie.match(topic)
        if not matches:
            return ()
        if len(matches) == 1:
            return matches[0].keys()
        return {node for subscribers in matches for node in subscribers}
