"""The grammar of DynamoDB's expression language, for lark's LALR(1) parser.

One grammar, three start rules: ``condition`` (ConditionExpression,
FilterExpression, KeyConditionExpression), ``update`` (UpdateExpression) and
``projection`` (ProjectionExpression). Precedence, loosest first, as DynamoDB
documents it: OR, AND, NOT, then a parenthesized condition, a function, or a
comparison / BETWEEN / IN between operands (these do not chain).

Lexical rules follow the service: keywords are case-insensitive, function
names are not; a bare attribute name starts with a letter and continues with
letters, digits and ``_``; ``#name`` and ``:value`` references may start with
any of those. Whitespace separates tokens and is otherwise ignored.
"""

from __future__ import annotations

from typing import Final

GRAMMAR: Final = r"""
?condition: disjunction
?disjunction: conjunction (_OR conjunction)*
?conjunction: negation (_AND negation)*
?negation: _NOT negation -> negation
         | predicate
?predicate: "(" condition ")"
          | operand comparator operand -> comparison
          | operand _BETWEEN operand _AND operand -> between
          | operand _IN "(" operand ("," operand)* ")" -> membership
          | call -> function_condition
!comparator: "=" | "<>" | "<" | "<=" | ">" | ">="

?operand: path | value_ref | call
call: NAME "(" operand ("," operand)* ")"
value_ref: VALUE_REF
path: (NAME | NAME_REF) ("." (NAME | NAME_REF) | "[" INDEX "]")*

update: update_clause+
?update_clause: _SET set_action ("," set_action)* -> set_clause
              | _REMOVE path ("," path)* -> remove_clause
              | _ADD path value_ref ("," path value_ref)* -> add_clause
              | _DELETE path value_ref ("," path value_ref)* -> delete_clause
set_action: path "=" set_value
?set_value: operand
          | operand "+" operand -> plus
          | operand "-" operand -> minus

projection: path ("," path)*

_OR: "OR"i
_AND: "AND"i
_NOT: "NOT"i
_BETWEEN: "BETWEEN"i
_IN: "IN"i
_SET: "SET"i
_REMOVE: "REMOVE"i
_ADD: "ADD"i
_DELETE: "DELETE"i
NAME: /[A-Za-z][A-Za-z0-9_]*/
NAME_REF: /#[A-Za-z0-9_]+/
VALUE_REF: /:[A-Za-z0-9_]+/
INDEX: /[0-9]+/
%ignore /[ \t\r\n]+/
"""
